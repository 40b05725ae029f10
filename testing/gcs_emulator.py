"""A real Cloud Storage emulator process and a token endpoint, for the GcsBucket outputs tests.

Why both: production writes output zips through prefect-gcp's `GcsBucket`, whose
`GcpCredentials` always hands google-cloud-storage real credentials (a service
account, else the machine's default ones); there is no anonymous mode to switch
on. So the tests give the block a real service account (a fresh RSA key) whose
`token_uri` is a local stand-in that checks the signed assertion, and point
google-cloud-storage at the emulator with its own documented setting,
`STORAGE_EMULATOR_HOST`. The block, the credentials flow, the client's requests
and the HTTP are real; only Google's servers are replaced. Reading back goes
through the emulator's JSON API with plain urllib, not the client under test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, quote

from prefect_cs.testing.processes import end_process
from prefect_cs.testing.scratch import free_port
from prefect_cs.testing.standin import Recorded, Reply, StandIn

EMULATOR_VERSION_HINT = 'pip install -e ".[test]" (it pins gcp-storage-emulator)'


def emulator_binary() -> str:
    """The `gcp-storage-emulator` script of this venv; its absence is an error, not a skip."""
    beside = Path(sys.executable).parent / "gcp-storage-emulator"
    path = str(beside) if beside.exists() else shutil.which("gcp-storage-emulator")
    if not path:
        raise RuntimeError(f"gcp-storage-emulator is not installed: {EMULATOR_VERSION_HINT}")
    return path


class GcsEmulator:
    """Start and stop one `gcp-storage-emulator` process on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """What STORAGE_EMULATOR_HOST is set to (google-cloud-storage wants the scheme too)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "emulator.log"

    def argv(self) -> list[str]:
        data = str(self.workdir / "data")
        return [emulator_binary(), "-d", data, "start", "-H", "127.0.0.1", "--port", str(self.port)]

    def start(self, timeout: float = 20) -> GcsEmulator:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gcp-storage-emulator did not start on {self.url}; see {self.log_file}")

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=0.5) as reply:
                return reply.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        end_process(self.proc)
        self.proc = None

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the emulator's JSON API, read with plain urllib (independent of the code under test)

    def _call(self, method: str, path: str, body: dict | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.read()

    def create_bucket(self, name: str) -> str:
        self._call("POST", "/storage/v1/b?project=cs-test", {"name": name})
        return name

    def object_names(self, bucket: str) -> list[str]:
        listing = json.loads(self._call("GET", f"/storage/v1/b/{quote(bucket)}/o"))
        return sorted(item["name"] for item in listing.get("items", []))

    def read(self, bucket: str, name: str) -> bytes:
        return self._call(
            "GET", f"/storage/v1/b/{quote(bucket)}/o/{quote(name, safe='')}?alt=media"
        )


def new_service_account(token_uri: str) -> tuple[dict[str, str], bytes]:
    """(service_account_info as Google issues it, the public key's PEM) with a fresh RSA key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = {
        "type": "service_account",
        "project_id": "cs-test",
        "private_key_id": "cs-test-key",
        "private_key": private,
        "client_email": "cs-outputs@cs-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    return info, public


class TokenStandIn(StandIn):
    """Google's OAuth token endpoint for one service account: a JWT-bearer grant signed by
    its key gets a token; anything else (or every request once `refuse` is set) 400s."""

    def __init__(self, public_key: bytes | None = None) -> None:
        super().__init__()
        self.public_key = public_key
        self.refuse = False

    def answer(self, request: Recorded) -> Reply:
        if request.method != "POST" or request.route != "/token":
            return 404, {"error": "not_found"}
        if self.refuse or not self.signed(request.body):
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        return 200, {"access_token": "cs-test-token", "expires_in": 3600, "token_type": "Bearer"}

    def signed(self, body: object) -> bool:
        from google.auth import jwt

        assertion = parse_qs(str(body or "")).get("assertion", [""])[0]
        try:
            jwt.decode(assertion, certs=self.public_key, audience=None, verify=True)
        except (ValueError, urllib.error.URLError):
            return False
        return True
