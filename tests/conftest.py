"""Every test sees the project's auto table alone: a developer's own benchmark records
(`gencore bench --record`, ~/.cache/gencore/records) must not change what impl="auto" runs here."""
import os
import tempfile

os.environ["GENCORE_RECORDS_DIR"] = os.path.join(tempfile.mkdtemp(prefix="gencore-records-"), "none")
