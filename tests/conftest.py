"""Every test sees the project's auto table alone, and leaves the project's records alone: a
developer's own benchmark records (`gencore bench --record`, ~/.cache/gencore/records) must not
change what impl="auto" runs here, and benchmark suites run by tests (test_cli's `gencore bench`)
write their records to a scratch folder, not benchmarks/records/ (the variables reach subprocesses)."""
import os
import tempfile

_scratch = tempfile.mkdtemp(prefix="gencore-records-")
os.environ["GENCORE_RECORDS_DIR"] = os.path.join(_scratch, "local")
os.environ["GENCORE_RECORDS_OUT"] = os.path.join(_scratch, "suites")
