"""nginx as the router in front of a profile's pools: its image, its config (from nginx.conf.j2).

Why nginx and not PyPI's vllm-router: vllm-router balances ONE list of workers (round robin, power of
two, consistent hashing, cache-aware) or a prefill/decode pair; it has no rule that sends a request
class to its own pool, which is the point of the class-aware and slow-isolation profiles. nginx
(Debian bookworm's package) does all of it with stock directives: `map` from a request header to an
upstream per pool, `least_conn`, `hash ... consistent` for prefix affinity, `proxy_buffering off`
so SSE tokens and slow readers' backpressure pass straight through, and a JSON access log that
shows where each request went. Rendering is pure text; the image and container live here too
because they are a few lines (the config is validated by the real `nginx -t` in tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jinja2

from smoke.profiles import Placement, Profile

TEMPLATE = Path(__file__).with_name("nginx.conf.j2")
ROUTER_TAG = "deploylab/sweep-router:nginx-bookworm"
BASE = "deploylab/base:debian-bookworm"
ROUTER_PORT = 8080
ENGINE_PORT = 8000
CLASS_HEADER = "X-Request-Class"
PREFIX_CHARS = 256
CONF_IN_CONTAINER = "/etc/nginx/deploylab.conf"

DOCKERFILE = f"""\
FROM {BASE}
COPY deploylab-ca.crt /usr/local/share/ca-certificates/deploylab-ca.crt
# nginx-light: core http modules only (map, upstream hash/least_conn, proxy); nothing else needed.
RUN apt-get update -q && apt-get install -y -q --no-install-recommends nginx-light \\
    && rm -rf /var/lib/apt/lists/* && nginx -v
LABEL org.deploylab.role=sweep-router
CMD ["nginx", "-c", "{CONF_IN_CONTAINER}"]
"""


def upstream_name(pool: str) -> str:
    return "pool_" + pool.replace("-", "_")


def replica_host(pool: str, index: int) -> str:
    return f"{pool}-{index}"


@dataclass(frozen=True)
class Upstream:
    name: str
    balance: str
    servers: tuple[str, ...]


def render(profile: Profile, placements: Sequence[Placement], port: int = ROUTER_PORT,
           prefix_chars: int = PREFIX_CHARS) -> str:
    ups = tuple(Upstream(upstream_name(p.name), p.balance,
                         tuple(f"{replica_host(x.pool, x.index)}:{ENGINE_PORT}" for x in placements if x.pool == p.name))
                for p in profile.pools)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(TEMPLATE.read_text()).render(
        profile=profile.name, port=port, prefix_chars=prefix_chars, upstreams=ups,
        default_upstream=upstream_name(profile.default_pool),
        routes=[(cls, upstream_name(pool)) for cls, pool in profile.routes])


def ensure_image(client, log_path: Path) -> str:
    from docker.errors import ImageNotFound

    from containers.build import build_image
    try:
        client.images.get(ROUTER_TAG)
    except ImageNotFound:
        build_image(client, DOCKERFILE, ROUTER_TAG, log_path)
    return ROUTER_TAG


def config_test(client, conf_text: str, hosts: Sequence[str], work: Path) -> tuple[bool, str]:
    """Run the real `nginx -t` on a rendered config; replica names resolve to loopback for the test."""
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(conf_text)
    c = client.containers.run(ROUTER_TAG, ["nginx", "-t", "-c", CONF_IN_CONTAINER], detach=True,
                              volumes={str(conf.resolve()): {"bind": CONF_IN_CONTAINER, "mode": "ro"}},
                              extra_hosts={h: "127.0.0.1" for h in hosts}, network_mode="bridge",
                              labels={"org.deploylab.role": "sweep"})
    try:
        rc = c.wait(timeout=60)["StatusCode"]
        return rc == 0, c.logs().decode(errors="replace")
    finally:
        c.remove(force=True)


@dataclass(frozen=True)
class Router:
    url: str
    container: object     # testcontainers DockerContainer

    def log_lines(self) -> list[str]:
        return self.container.get_wrapped_container().logs(stdout=True, stderr=False).decode(errors="replace").splitlines()


@contextmanager
def nginx_router(conf_path: Path, network, labels: dict[str, str], timeout_s: float = 60.0,
                 extra_hosts: dict[str, str] | None = None) -> Iterator[Router]:
    """Start nginx on `network` with the rendered config; publish its port on 127.0.0.1 only.

    extra_hosts: static names → addresses (a test serves two pools from one replica with it).
    """
    import httpx
    from testcontainers.core.container import DockerContainer

    from containers.engine import client as docker_client
    c = (DockerContainer(ROUTER_TAG)
         .with_volume_mapping(str(conf_path.resolve()), CONF_IN_CONTAINER, "ro")
         .with_network(network).with_network_aliases("router")
         .with_kwargs(labels=labels, **({"extra_hosts": extra_hosts} if extra_hosts else {})))
    c.ports[f"{ROUTER_PORT}/tcp"] = ("127.0.0.1",)
    c.start()
    try:
        port = int(docker_client().api.port(c.get_wrapped_container().id, ROUTER_PORT)[0]["HostPort"])
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while True:  # explicit wait: the container must stay up and answer its own health location
            w = c.get_wrapped_container()
            w.reload()
            if w.status not in ("created", "running"):
                raise RuntimeError(f"nginx router {w.status}: {w.logs().decode(errors='replace')[-1500:]}")
            try:
                if httpx.get(url + "/router/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx router not answering after {timeout_s:.0f}s")
            time.sleep(0.3)
        yield Router(url, c)
    finally:
        try:
            c.stop()
        except Exception:  # the network's cleanup removes what is left of ours
            pass
