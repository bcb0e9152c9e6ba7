"""SignalWire sandbox: a loopback HTTP peer playing the Compatibility API parts we use.

Python: `with Sandbox(project_id, api_token, signing_key) as sb: sb.base_url ...`
Standalone: `python -m devstack.sandbox --port 8123` (see __main__.py).
"""

from devstack.sandbox.app import Sandbox

DEFAULT_PROJECT_ID = "00000000-0000-4000-8000-000000000000"
DEFAULT_API_TOKEN = "sandbox-token"
DEFAULT_SIGNING_KEY = "PSK_sandbox"

__all__ = ["Sandbox", "DEFAULT_PROJECT_ID", "DEFAULT_API_TOKEN", "DEFAULT_SIGNING_KEY"]
