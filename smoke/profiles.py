"""Serving profiles as data: pools of engine replicas, their knobs by intent, and routing rules.

A profile is smoke/profiles/NAME.toml, registered by its file name (GuideLLM-style); a path is read
as is. It names pools (replicas of the engine image, cores per replica, knobs by intent, how the
router balances within the pool) and routing (request class → pool, a default pool for the rest).
Every key is checked at load time; mistakes are one UsageError line "file: key: what was expected".
Knob values are checked against smoke/sweep/knobs.toml here; whether the engine under test accepts
them is decided later, from the engine itself (smoke.sweep.knobs.translate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from model.errors import UsageError, did_you_mean
from model.toml import NonEmptyStr, PositiveInt, Strict, read_toml, validate
from smoke.mix import Mix
from smoke.sweep import knobs as knobmod

PROFILES_DIR = Path(__file__).with_name("profiles")
BALANCE = ("round_robin", "least_conn", "prefix_hash")


@dataclass(frozen=True)
class Pool:
    name: str
    replicas: int
    cores: int                       # per replica; the sweep turns these into cpusets
    balance: str                     # within the pool: round_robin | least_conn | prefix_hash
    knobs: tuple[tuple[str, Any], ...]
    image: str = ""                  # "" = the sweep's engine image

    @property
    def knob_dict(self) -> dict[str, Any]:
        return dict(self.knobs)


@dataclass(frozen=True)
class Profile:
    name: str
    source: str
    description: str
    pools: tuple[Pool, ...]
    default_pool: str
    routes: tuple[tuple[str, str], ...]   # (class, pool)

    def pool(self, name: str) -> Pool:
        return next(p for p in self.pools if p.name == name)

    def pool_for(self, cls: str) -> str:
        return dict(self.routes).get(cls, self.default_pool)

    @property
    def replicas(self) -> int:
        return sum(p.replicas for p in self.pools)

    def check_classes(self, mix: Mix) -> None:
        """Every routed class exists in the mix (a typo would silently send it to the default pool)."""
        names = [c.name for c in mix.classes]
        for cls, _ in self.routes:
            if cls not in names:
                raise UsageError(f"{self.source}: routing.classes.{cls}: not a class of mix {mix.name!r}"
                                 f"{did_you_mean(cls, names)} (classes: {', '.join(names)})")


def registered() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PROFILES_DIR.glob("*.toml"))}


def resolve(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise UsageError(f"{p}: no such profile file")
        return p
    reg = registered()
    if str(name_or_path) in reg:
        return reg[str(name_or_path)]
    raise UsageError(f"{name_or_path}: not a profile file or a registered profile{did_you_mean(str(name_or_path), reg)}"
                     f" (registered: {', '.join(reg)})")


PoolName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,30}$",  # a DNS alias and an nginx upstream name
                                 description="a pool name of lowercase letters, digits and '-' (it becomes a host name)")]


class _Pool(Strict):
    replicas: PositiveInt = 1
    cores: PositiveInt = 1
    balance: Literal[BALANCE] = "round_robin"  # type: ignore[valid-type]
    knobs: dict[str, Any] = Field({}, description="a table of knob = value")
    image: str = Field("", description="an image tag")


class _Meta(Strict):
    name: NonEmptyStr | None = None
    description: str = ""
    extends: NonEmptyStr | None = Field(None, description="a registered profile or a .toml path (relative to this file)")


class _Routing(Strict):
    default: str | None = None
    classes: dict[str, str] = Field({}, description="a table of class = pool")


class _ProfileFile(Strict):
    profile: _Meta = _Meta()
    pools: dict[PoolName, _Pool] = Field(min_length=1, description="at least one [pools.NAME] table")
    routing: _Routing = _Routing()


def parse(doc: dict[str, Any], source: str, stem: str) -> Profile:
    f = validate(_ProfileFile, doc, source)
    intents = knobmod.load_intents()
    for name, pool in f.pools.items():
        knobmod.check_names(pool.knobs, f"{source}: pools.{name}.knobs", intents)
    names = list(f.pools)

    def no_pool(key: str, pool: str) -> UsageError:
        return UsageError(f"{source}: {key}: no pool {pool!r}{did_you_mean(pool, names)} (pools: {', '.join(names)})")

    default = f.routing.default if f.routing.default is not None else names[0] if len(names) == 1 else None
    if default is None:
        raise UsageError(f"{source}: routing.default: missing: with several pools, name the pool for unrouted "
                         f"classes ({', '.join(names)})")
    if default not in names:
        raise no_pool("routing.default", default)
    for cls, pool in f.routing.classes.items():
        if pool not in names:
            raise no_pool(f"routing.classes.{cls}", pool)
    for p in names:
        if p not in {default, *f.routing.classes.values()}:
            raise UsageError(f"{source}: pools.{p}: no class is routed here (add it to routing.classes or make it "
                             "routing.default)")
    pools = tuple(Pool(k, p.replicas, p.cores, p.balance, tuple(p.knobs.items()), p.image) for k, p in f.pools.items())
    return Profile(f.profile.name or stem, source, f.profile.description, pools, default,
                   tuple(f.routing.classes.items()))


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """over's keys on base's, tables merged key by key (a variant states only what it changes)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def document(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A profile file's TOML with [profile] extends resolved: the base's document under this file's keys.
    The base's name and description are not inherited."""
    doc = read_toml(path)
    meta = doc.get("profile")
    base = meta.get("extends") if isinstance(meta, dict) else None
    if not isinstance(base, str) or not base:
        return doc                           # absent, or wrong: parse() says so in one line
    here = (*chain, path.resolve())
    try:
        bpath = resolve(path.parent / base if base.endswith(".toml") else base)
    except UsageError as exc:
        raise UsageError(f"{path}: profile.extends: {exc}") from None
    if bpath.resolve() in here:
        raise UsageError(f"{path}: profile.extends: {base!r} extends {path.name} again (a cycle: "
                         + " -> ".join(p.name for p in (*here, bpath)) + ")")
    inherited = document(bpath, here)
    inherited["profile"] = {}
    out = _merged(inherited, doc)
    del out["profile"]["extends"]
    return out


def load(name_or_path: str | Path) -> Profile:
    path = resolve(name_or_path)
    return parse(document(path), str(path), path.stem)


def load_many(names: list[str] | tuple[str, ...] | None) -> list[Profile]:
    """The named profiles (comma-separated allowed), or every registered one in file order."""
    if not names:
        return [load(p) for p in registered().values()]
    flat = [n.strip() for x in names for n in str(x).split(",") if n.strip()]
    return [load(n) for n in flat]


@dataclass(frozen=True)
class Placement:
    pool: str
    index: int
    cpuset: str          # e.g. "0" or "0,1"
    shared: bool         # some core also serves another replica


def place(profile: Profile, cpus: list[int] | tuple[int, ...]) -> tuple[Placement, ...]:
    """Give replicas cores in order; with more cores asked than the host has, wrap around (shared)."""
    cpus = list(cpus)
    asked = sum(p.replicas * min(p.cores, len(cpus)) for p in profile.pools)
    shared = asked > len(cpus)
    out, k = [], 0
    for p in profile.pools:
        for i in range(p.replicas):
            take = [cpus[(k + j) % len(cpus)] for j in range(min(p.cores, len(cpus)))]
            k += len(take)
            out.append(Placement(p.name, i, ",".join(map(str, sorted(take))), shared))
    return tuple(out)
