"""Defenses, registered by name (``abd defenses`` lists them), and their plug-ins.

Every defense implements :class:`Defense` (see :mod:`abd.defense.base`); ``--defense`` takes a registered
name or a ``+``-joined composition (``abd`` is ``sv+sr``). The Shuffling Vaccine and Self-Retrospection
also attach to any KD loop of one's own in a few lines (this example runs as a test):

>>> import torch
>>> from abd.models import create_model, create_generator
>>> from abd.defense import ShufflingVaccine, SelfRetrospection
>>> from abd.distill.losses import kl_mean
>>> _ = torch.manual_seed(0)
>>> teacher = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).eval()
>>> student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
>>> gen = create_generator("zskt", z_dim=16, channels=1, image_size=28, width=8)
>>> opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
>>> opt_s = torch.optim.Adam(student.parameters(), lr=2e-3)
>>> sv = ShufflingVaccine(teacher)                 # shuffled-teacher ensemble
>>> sr = SelfRetrospection(student, teacher)      # trigger synthesis + unlearning, tuned defaults
>>> for step in range(4):
...     x = gen(torch.randn(16, 16))
...     loss_g = -kl_mean(teacher(x), student(x)) + sv.penalty(x)   # SV: a term on the synthesis loss
...     opt_g.zero_grad(); loss_g.backward(); opt_g.step()
...     x = x.detach()
...     with torch.no_grad():
...         t = teacher(x)
...     opt_s.zero_grad()
...     extra = sr.step(x)                     # SR: a loss term (mode "consistency", every step)
...     (kl_mean(t, student(x)) + extra).backward(); opt_s.step()
>>> sr.last_delta.shape
torch.Size([1, 1, 28, 28])

The paper's SR (``SelfRetrospection(student, teacher, mode="hypergrad")``) runs only in the final phase of
training; its ``step`` adds the unlearning hypergradient to the student's ``.grad`` and returns zero.
"""

from abd.defense.base import (
    COMPOSITIONS,
    DEFENSES,
    Defense,
    Phase,
    branch_parent,
    components,
    create_defense,
    defense_names,
    register_defense,
)
from abd.defense.clp import CLPOptions, channel_lipschitz, clp_prune
from abd.defense.dhbe import DHBEOptions
from abd.defense.hypergrad import fixed_point_hypergrad
from abd.defense.retrospect import SelfRetrospection, SROptions, frozen_bn_stats, suspect_class
from abd.defense.shuffle import ShufflingVaccine, SVOptions, VaccineReport, build_vaccine, shufflable_layers

__all__ = [
    "CLPOptions",
    "DHBEOptions",
    "COMPOSITIONS",
    "DEFENSES",
    "Defense",
    "Phase",
    "SROptions",
    "SVOptions",
    "SelfRetrospection",
    "ShufflingVaccine",
    "VaccineReport",
    "branch_parent",
    "build_vaccine",
    "channel_lipschitz",
    "clp_prune",
    "components",
    "create_defense",
    "defense_names",
    "fixed_point_hypergrad",
    "frozen_bn_stats",
    "register_defense",
    "shufflable_layers",
    "suspect_class",
]
