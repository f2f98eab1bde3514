"""Container health check: exit 0 when this container's process answers GET /health/live.

The image has no curl, so Docker's HEALTHCHECK runs this with the image's own Python. One image
runs every role, and the check does not know which one it is in: it asks the API's address
(API_ADDR, where `api` and `run` listen) and then the worker's (HEALTH_ENDPOINT), and passes
when either answers 200. HEALTHCHECK_URL, when set, is the only address asked.
"""

import os
import sys
import urllib.request

TIMEOUT_SECONDS = 3.0
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def _url(address: str) -> str:
    host, _, port = address.strip().rpartition(":")
    if host in _WILDCARDS:
        host = "127.0.0.1"
    return f"http://{host}:{port}/health/live"


def _candidates() -> list[str]:
    if os.environ.get("HEALTHCHECK_URL"):
        return [os.environ["HEALTHCHECK_URL"]]
    addresses = (os.environ.get("API_ADDR", ":8080"), os.environ.get("HEALTH_ENDPOINT", ":8088"))
    return [_url(address) for address in addresses]


def main() -> int:
    # The process is local: never go through an HTTP(S)_PROXY the container may have set.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    problems = []
    for url in _candidates():
        try:
            with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
                if response.status == 200:
                    return 0
                problems.append(f"{url}: HTTP {response.status}")
        except OSError as exc:  # refused, timed out, or an HTTP error status (URLError)
            problems.append(f"{url}: {exc}")
    print("unhealthy: " + "; ".join(problems), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
