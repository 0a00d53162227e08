import os
import tempfile

# matplotlib (and friends) write caches under HOME; keep tests from touching the user's files
_tmp = tempfile.mkdtemp(prefix="vitheory-tests-")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_tmp, "mpl"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
