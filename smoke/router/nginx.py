"""nginx as the router in front of a profile's pools: its image, its config (from nginx.conf.j2).

Why nginx and not PyPI's vllm-router: vllm-router balances ONE list of workers (round robin, power of
two, consistent hashing, cache-aware) or a prefill/decode pair; it has no rule that sends a request
class to its own pool, which is the point of the class-aware and slow-isolation profiles. nginx
(Debian bookworm's package) does all of it with stock directives: `map` from a request header to an
upstream per pool, `least_conn`, `hash ... consistent` for prefix affinity, `proxy_buffering off`
so SSE tokens and slow readers' backpressure pass straight through, and a JSON access log that
shows where each request went. Rendering is pure text; the image (images/templates/
sweep-router.Dockerfile.j2) and the container come from the toolkit (containers/); the config is
validated by the real `nginx -t` in tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jinja2

from smoke.profiles import Placement, Profile

CONF_TEMPLATE = Path(__file__).with_name("nginx.conf.j2")
ROUTER_TAG = "deploylab/sweep-router:nginx-bookworm"
BASE = "deploylab/base:debian-bookworm"
ROUTER_PORT = 8080
ENGINE_PORT = 8000
CLASS_HEADER = "X-Request-Class"
PREFIX_CHARS = 256
CONF_IN_CONTAINER = "/etc/nginx/deploylab.conf"

TEMPLATE = "sweep-router.Dockerfile.j2"


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
    return env.from_string(CONF_TEMPLATE.read_text()).render(
        profile=profile.name, port=port, prefix_chars=prefix_chars, upstreams=ups,
        default_upstream=upstream_name(profile.default_pool),
        routes=[(cls, upstream_name(pool)) for cls, pool in profile.routes])


def ensure_image(client, log_path: Path) -> str:
    from containers.images import ensure_image as build_or_get
    from images.render import TEMPLATES
    return build_or_get(client, ROUTER_TAG, TEMPLATE, TEMPLATES, log_path,
                        context={"base_image": BASE, "conf": CONF_IN_CONTAINER}).tag


def config_test(client, conf_text: str, hosts: Sequence[str], work: Path) -> tuple[bool, str]:
    """Run the real `nginx -t` on a rendered config; replica names resolve to loopback for the test."""
    from containers.run import run_once
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(conf_text)
    ran = run_once(client, ROUTER_TAG, ["nginx", "-t", "-c", CONF_IN_CONTAINER], role="sweep",
                   ro={CONF_IN_CONTAINER: conf}, extra_hosts={h: "127.0.0.1" for h in hosts}, network="bridge",
                   timeout_s=60)
    return ran.ok, ran.log


@dataclass(frozen=True)
class Router:
    url: str
    server: object     # containers.server.Server

    def log_lines(self) -> list[str]:
        return self.server.logs(stdout=True, stderr=False).splitlines()


@contextmanager
def nginx_router(conf_path: Path, network, labels: dict[str, str], timeout_s: float = 60.0,
                 extra_hosts: dict[str, str] | None = None) -> Iterator[Router]:
    """Start nginx on `network` with the rendered config; publish its port on 127.0.0.1 only.

    extra_hosts: static names → addresses (a test serves two pools from one replica with it).
    The container must stay up and answer its own /router/health; it is removed on the way out.
    """
    from containers.server import Server, http_ready
    srv = Server(ROUTER_TAG, None, port=ROUTER_PORT, role="sweep-router", ready=http_ready(ROUTER_PORT, "/router/health"),
                 ro={CONF_IN_CONTAINER: conf_path}, network=network, aliases=("router",), labels=labels,
                 timeout_s=timeout_s, name="nginx router", **({"extra_hosts": extra_hosts} if extra_hosts else {}))
    with srv:
        yield Router(srv.url, srv)
