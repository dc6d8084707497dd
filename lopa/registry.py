"""One registry of methods: `method.name` in the config -> the Method class that implements it."""

from __future__ import annotations

import importlib
import pkgutil

from lopa.errors import check_choice

METHODS: dict[str, type] = {}
# Packages whose modules define methods; importing them fills METHODS through @register_method.
METHOD_PACKAGES = ("lopa.methods", "baselines")


def register_method(name: str):
    """Class decorator: make a Method available as `method=<name>`."""

    def register(cls: type) -> type:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice ({METHODS[name].__name__}, {cls.__name__})")
        METHODS[name] = cls
        return cls

    return register


def _import_method_modules() -> None:
    for package_name in METHOD_PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package_name}.{module.name}")


def known_methods() -> list[str]:
    _import_method_modules()
    return sorted(METHODS)


def method_class(name: str) -> type:
    """The Method class registered as `name`, with an error listing the known ones."""
    check_choice("method", name, known_methods())
    return METHODS[name]
