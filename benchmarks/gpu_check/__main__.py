import os
import sys

if "--dry-run" in sys.argv[1:]:  # before triton is imported: the kernels through the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .cli import main  # noqa: E402

sys.exit(main())
