"""imsm as an lm-evaluation-harness model type: `import imsm.lm_eval` registers `imsm` with lm-eval.

`python -m imsm.lm_eval ARGS` is lm-eval's own command line with that model type and, given a
data directory, the `imsm_*` knowledge tasks (`imsm/lm_eval/task_configs/`). lm-eval is an optional extra:
`pip install 'imsm[lm-eval]'`.
"""

import sys

try:
    import lm_eval  # noqa: F401
except ImportError:
    _MISSING = "imsm.lm_eval needs lm-evaluation-harness; install it with: pip install 'imsm[lm-eval]'"
    # While `python -m imsm.lm_eval` imports this package, argv[0] is "-m": a command line
    # error is one line and exit code 2, as everywhere in imsm.
    if sys.argv[:1] == ["-m"]:
        print(f"imsm.lm_eval: error: {_MISSING}", file=sys.stderr)
        sys.exit(2)
    raise ImportError(_MISSING) from None

from imsm.lm_eval.model import IMSMLM, load_for_evaluation
from imsm.lm_eval.tasks import TASK_CONFIG_DIR, write_task_configs

__all__ = ["IMSMLM", "TASK_CONFIG_DIR", "load_for_evaluation", "write_task_configs"]
