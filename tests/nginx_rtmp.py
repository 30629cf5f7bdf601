"""nginx with the RTMP module (Debian: nginx-light + libnginx-mod-rtmp), run from a private config on a
loopback port and stopped by PID: the third-party RTMP server our edges must interoperate with."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from common.system import free_port, stop_process
from tests.helpers import wait_for

MODULE_PATHS = ("/usr/lib/nginx/modules/ngx_rtmp_module.so", "/usr/lib64/nginx/modules/ngx_rtmp_module.so")


def nginx_rtmp_available() -> str | None:
    """Why nginx-rtmp cannot run here, or None when it can."""
    if shutil.which("nginx") is None:
        return "nginx is not installed (Debian: apt-get install nginx-light libnginx-mod-rtmp)"
    if not any(Path(p).exists() for p in MODULE_PATHS):
        return "the nginx RTMP module is not installed (Debian: libnginx-mod-rtmp)"
    return None


class NginxRtmp:
    def __init__(self, workdir: Path, *, chunk_size: int = 4096, extra_rtmp: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        module = next(p for p in MODULE_PATHS if Path(p).exists())
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(
            f"""load_module {module};
daemon off;
master_process off;
worker_processes 1;
error_log {workdir}/error.log info;
pid {workdir}/nginx.pid;
events {{ worker_connections 16384; }}
rtmp {{
    server {{
        listen 127.0.0.1:{self.port};
        chunk_size {chunk_size};
        application live {{
            live on;
            {extra_rtmp}
        }}
    }}
}}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live"

    def start(self) -> NginxRtmp:
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.workdir), "-e", str(self.workdir / "error.log"), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

        def listening() -> bool:
            import socket

            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True

        wait_for(listening, 10, "nginx-rtmp to listen")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
