"""The layers: data, models, attacks, distillation, defenses and audit do not import the experiment layer
(grids, tables, the demo), which builds on them."""

import subprocess
import sys


def test_core_layers_do_not_import_the_experiment_layer():
    code = ("import sys, abd.data, abd.models, abd.attacks.teacher, abd.distill.engine, abd.defense, abd.audit, "
            "abd.checkpoint, abd.api\n"
            "print(sorted(m for m in sys.modules if m.startswith('abd.experiment')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
