"""Defenses: the Shuffling Vaccine, Self-Retrospection, implicit hypergradients and the teacher audit."""

from abd.defense.hypergrad import fixed_point_hypergrad
from abd.defense.retrospect import SelfRetrospection, frozen_bn_stats
from abd.defense.shuffle import ShufflingVaccine, VaccineReport, shufflable_layers

__all__ = [
    "SelfRetrospection",
    "ShufflingVaccine",
    "VaccineReport",
    "fixed_point_hypergrad",
    "frozen_bn_stats",
    "shufflable_layers",
]
