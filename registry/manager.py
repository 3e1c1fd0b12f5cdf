"""The one plugin manager: loads entry points of group ``mistralrs`` and builds the registries."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, Generic, Iterator, TypeVar

import pluggy

from mistralrs.registry import hookspecs
from mistralrs.registry.errors import DuplicateRegistration, PluginLoadError, RegistryError, UnknownName
from mistralrs.registry.specs import AdapterSpec, ArchitectureSpec, FormatSpec, QuantTypeSpec, Registered, resolve

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "mistralrs"
BUILTIN_QUANT_PLUGIN = "quant"  # the entry point whose types engine/kernels implement (pyproject.toml)
T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> spec, remembering which plugin registered each name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Registered] = {}

    def add(self, spec: T, plugin: str, origin: str = "") -> None:
        name = getattr(spec, "name")
        if name in self._entries:
            raise DuplicateRegistration(self.kind, name, self._entries[name].plugin, plugin)
        self._entries[name] = Registered(spec, plugin, origin)

    def get(self, name: str) -> T:
        try:
            return self._entries[name].spec
        except KeyError:
            raise UnknownName(self.kind, name, list(self._entries)) from None

    def registered(self, name: str) -> Registered:
        self.get(name)
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Registered]:
        return iter(self._entries.values())


class QuantTypeRegistry(Registry[QuantTypeSpec]):
    """Quant types by name and by GGUF type id: file readers look types up by id, the rest by name,
    on every tensor, so both are plain dict lookups."""

    def __init__(self) -> None:
        super().__init__("quant type")
        self._by_id: dict[int, QuantTypeSpec] = {}

    def add(self, spec: QuantTypeSpec, plugin: str, origin: str = "") -> None:
        if spec.native and plugin != BUILTIN_QUANT_PLUGIN:  # a plugin cannot add C++ kernels
            raise RegistryError(f"quant type {spec.name!r} from plugin {plugin!r} says native=True, but only the "
                                f"built-in kernels' types are native; leave it False (weights are dequantized)")
        owner = self._by_id.get(spec.ggml_type) if spec.ggml_type is not None else None
        if owner is not None and owner.name != spec.name:  # a file's type id must mean one layout
            raise DuplicateRegistration("GGUF type id", str(spec.ggml_type), self.registered(owner.name).plugin, plugin)
        super().add(spec, plugin, origin)
        if spec.ggml_type is not None:
            self._by_id[spec.ggml_type] = spec

    def find(self, name: str) -> QuantTypeSpec | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.spec

    def by_ggml_type(self, type_id: int) -> QuantTypeSpec | None:
        return self._by_id.get(type_id)


@dataclass
class PluginInfo:
    name: str
    module: str
    origin: str  # "distribution version"
    error: str | None = None


@dataclass
class Registries:
    architectures: Registry[ArchitectureSpec] = field(default_factory=lambda: Registry("architecture"))
    formats: Registry[FormatSpec] = field(default_factory=lambda: Registry("format"))
    quant_types: QuantTypeRegistry = field(default_factory=QuantTypeRegistry)
    adapters: Registry[AdapterSpec] = field(default_factory=lambda: Registry("adapter"))
    plugins: list[PluginInfo] = field(default_factory=list)

    def gguf_claimant(self, gguf: str, metadata: dict[str, Any]) -> ArchitectureSpec | None:
        """The family whose ``gguf_claim`` takes this file, if one does."""
        for entry in self.architectures:
            spec: ArchitectureSpec = entry.spec
            if spec.gguf_claim and gguf in spec.gguf_architectures and resolve(spec.gguf_claim)(metadata):
                return spec
        return None

    def architecture_for(self, *, gguf: str | None = None, hf: list[str] | None = None) -> ArchitectureSpec:
        """Find the family that accepts a GGUF architecture name or one of HF's class names."""
        for entry in self.architectures:
            spec: ArchitectureSpec = entry.spec
            if gguf is not None and gguf in spec.gguf_architectures:
                return spec
            if hf and any(h in spec.hf_architectures for h in hf):
                return spec
        wanted = gguf if gguf is not None else ", ".join(hf or []) or "(none declared)"
        known = sorted(
            {a for e in self.architectures for a in (*e.spec.gguf_architectures, *e.spec.hf_architectures)}
        )
        raise UnknownName("model architecture", wanted, known)


def _origin(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"


class PluginHost:
    """Owns the pluggy manager; plugins are loaded once, registries built on demand."""

    def __init__(self, strict: bool = False, extra_plugins: list[tuple[str, ModuleType | Any]] | None = None):
        self.strict = strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        self._origins: dict[str, str] = {}
        self._load_entry_points()
        for name, module in extra_plugins or []:
            self.pm.register(module, name=name)
            self._origins[name] = "registered in-process"
            self.infos.append(PluginInfo(name, getattr(module, "__name__", repr(module)), "registered in-process"))
        self._registries: Registries | None = None

    def _load_entry_points(self) -> None:
        seen: set[str] = set()
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(ep.name)
            origin = _origin(ep)
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
            except Exception as exc:  # a broken third-party plugin must not take the rest down
                if self.strict:
                    raise PluginLoadError(ep.name, exc) from exc
                log.warning("skipping plugin %r (%s): %s: %s", ep.name, origin, type(exc).__name__, exc)
                self.infos.append(PluginInfo(ep.name, ep.value, origin, error=f"{type(exc).__name__}: {exc}"))
                continue
            self._origins[ep.name] = origin
            self.infos.append(PluginInfo(ep.name, ep.value, origin))

    def _call_each(self, hook_name: str, registry: Registry[Any]) -> None:
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin = impl.plugin_name
            origin = self._origins.get(plugin, "")

            def register(spec: Any, _plugin: str = plugin, _origin: str = origin) -> None:
                registry.add(spec, _plugin, _origin)

            impl.function(register=register)

    @property
    def registries(self) -> Registries:
        if self._registries is None:
            regs = Registries(plugins=self.infos)
            self._call_each("register_architectures", regs.architectures)
            self._call_each("register_formats", regs.formats)
            self._call_each("register_quant_types", regs.quant_types)
            self._call_each("register_adapters", regs.adapters)
            self._registries = regs
        return self._registries

    def register_configs(self, config_store: Any) -> None:
        self.pm.hook.register_configs(config_store=config_store)


_host: PluginHost | None = None
_lock = threading.Lock()


def plugin_host(strict: bool | None = None) -> PluginHost:
    """The process-wide plugin host (created on first use; ``strict`` only matters then)."""
    global _host
    with _lock:
        if _host is None or (strict and not _host.strict):
            _host = PluginHost(strict=bool(strict))
        return _host


def registries() -> Registries:
    return plugin_host().registries


def reset_plugin_host() -> None:
    """Forget loaded plugins (tests install packages and look again)."""
    global _host
    with _lock:
        _host = None
