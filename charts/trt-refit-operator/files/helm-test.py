# `helm test`: the operator answers on its metrics Service with its own metrics. Runs in the operator image
# (python, no extra packages); URL and patience come from the environment the hook pod sets.
import os
import sys
import time
import urllib.request

url = os.environ["METRICS_URL"]
deadline = time.monotonic() + float(os.environ.get("TIMEOUT_SECONDS", "60"))
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode(errors="replace")
        break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"FAIL {url}: {exc}")
        time.sleep(1)
if "# TYPE trtrefit_models gauge" not in body:
    sys.exit(f"FAIL {url} answered, but not with the operator's metrics (no trtrefit_models)")
print(f"OK {url}: the operator serves its metrics")
