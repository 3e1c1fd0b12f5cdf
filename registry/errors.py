"""Registry errors: each names the plugins involved so the user knows whom to blame."""


class RegistryError(Exception):
    pass


class DuplicateRegistration(RegistryError):
    def __init__(self, kind: str, name: str, first: str, second: str):
        super().__init__(
            f"{kind} {name!r} is registered twice: by plugin {first!r} and by plugin {second!r}"
        )
        self.kind, self.name, self.first, self.second = kind, name, first, second


class PluginLoadError(RegistryError):
    def __init__(self, plugin: str, cause: BaseException):
        super().__init__(f"plugin {plugin!r} failed to load: {type(cause).__name__}: {cause}")
        self.plugin, self.cause = plugin, cause


class UnknownName(RegistryError):
    def __init__(self, kind: str, name: str, known: list[str]):
        known_list = ", ".join(sorted(known)) or "none"
        super().__init__(f"unknown {kind} {name!r}; registered: {known_list}")
        self.kind, self.name = kind, name
