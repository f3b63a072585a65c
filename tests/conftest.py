"""Every test sees the evidence it brings, and leaves the project's records alone:
- auto never calibrates (GENCORE_AUTOTUNE=0) unless a test turns it on, and its cache lives in a
  scratch folder, so what impl="auto" runs does not depend on what earlier runs measured here;
- a developer's own benchmark records (`gencore bench --record`, ~/.cache/gencore/records) must not
  change what impl="auto" runs: the user's records folder is a scratch one;
- benchmark suites run by tests (test_cli's `gencore bench`) write no records.
The variables reach subprocesses."""
import os
import tempfile

_scratch = tempfile.mkdtemp(prefix="gencore-tests-")
os.environ["GENCORE_RECORDS_DIR"] = os.path.join(_scratch, "local")
os.environ["GENCORE_CACHE_DIR"] = os.path.join(_scratch, "cache")
os.environ["GENCORE_AUTOTUNE"] = "0"
os.environ.pop("GENCORE_RECORDS_OUT", None)
