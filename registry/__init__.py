"""The plugin system: hookspecs, the plugin manager, entry-point loading and the registries."""

from mistralrs.registry.errors import DuplicateRegistration, PluginLoadError, RegistryError, UnknownName
from mistralrs.registry.hookspecs import hookimpl
from mistralrs.registry.manager import PluginHost, Registries, Registry, plugin_host, registries, reset_plugin_host
from mistralrs.registry.specs import AdapterSpec, ArchitectureSpec, FormatSpec, QuantTypeSpec, resolve

__all__ = [
    "AdapterSpec",
    "ArchitectureSpec",
    "DuplicateRegistration",
    "FormatSpec",
    "PluginHost",
    "PluginLoadError",
    "QuantTypeSpec",
    "Registries",
    "Registry",
    "RegistryError",
    "UnknownName",
    "hookimpl",
    "plugin_host",
    "registries",
    "reset_plugin_host",
    "resolve",
]
