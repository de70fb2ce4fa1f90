"""The TensorRT plugin API over the portable BERT plugins: plugin objects, creators, the registry.

What the plugins are (fields, parameters, shape rules, math) is ``plugins.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Imported for its registrations: the interleaved plugin versions join PLUGIN_DEFINITIONS.
import helpers.portable.plugins_interleaved  # noqa: F401
from helpers.portable.enums import Severity, TensorRTPhase
from helpers.portable.layers import Params
from helpers.portable.plugins import (
    PLUGIN_DEFINITIONS,
    PluginDefinition,
    PluginError,
    PluginField,
    PluginFieldCollection,
    parse_plugin,
)


class _Plugin:
    def __init__(self, definition: PluginDefinition, name: str, namespace: str, fields: list[PluginField], params: Params):
        self._definition = definition
        self._name = name
        self._fields = fields
        self._params = params
        self.plugin_namespace = namespace

    @property
    def plugin_type(self) -> str:
        return self._definition.name

    @property
    def plugin_version(self) -> str:
        return self._definition.version

    @property
    def num_outputs(self) -> int:
        return self._definition.num_outputs


class IPluginV2(_Plugin):
    """A created V2 plugin instance."""

    def clone(self) -> IPluginV2:
        return IPluginV2(self._definition, self._name, self.plugin_namespace, list(self._fields), dict(self._params))


class IPluginV3(_Plugin):
    """A created V3 plugin instance."""

    def clone(self) -> IPluginV3:
        return IPluginV3(self._definition, self._name, self.plugin_namespace, list(self._fields), dict(self._params))


class _PluginLogger:
    """The logger handed to init_libnvinfer_plugins; plugin errors go there, as in libnvinfer_plugin."""

    logger: Any = None

    @classmethod
    def log(cls, severity: Severity, msg: str) -> None:
        if cls.logger is not None:
            cls.logger.log(severity, msg)


class _CreatorBase:
    def __init__(self, definition: PluginDefinition, namespace: str) -> None:
        self._definition = definition
        self.name = definition.name
        self.plugin_version = definition.version
        self.plugin_namespace = namespace

    @property
    def field_names(self) -> PluginFieldCollection:
        return PluginFieldCollection(PluginField(spec.name, None, spec.type) for spec in self._definition.fields)

    def _create(self, name: str, field_collection: Iterable[PluginField]) -> tuple[list[PluginField], Params] | None:
        fields = list(field_collection)
        try:
            params, _ = parse_plugin(self._definition, name, fields)
        except PluginError as err:
            _PluginLogger.log(Severity.ERROR, str(err))
            return None
        return fields, params


class IPluginCreator(_CreatorBase):
    """Creator of an IPluginV2 version."""

    @property
    def interface_info(self) -> tuple[str, int, int]:
        return ("PLUGIN CREATOR_V1", 1, 0)

    def create_plugin(self, name: str, field_collection: Iterable[PluginField]) -> IPluginV2 | None:
        created = self._create(name, field_collection)
        return None if created is None else IPluginV2(self._definition, name, self.plugin_namespace, *created)


class IPluginCreatorV3One(_CreatorBase):
    """Creator of an IPluginV3 version."""

    @property
    def interface_info(self) -> tuple[str, int, int]:
        return ("PLUGIN CREATOR_V3ONE", 1, 0)

    def create_plugin(self, name: str, field_collection: Iterable[PluginField], phase: TensorRTPhase) -> IPluginV3 | None:
        if not isinstance(phase, TensorRTPhase):
            raise TypeError(f"create_plugin(): phase must be a TensorRTPhase, got {phase!r}")
        created = self._create(name, field_collection)
        return None if created is None else IPluginV3(self._definition, name, self.plugin_namespace, *created)


class IPluginRegistry:
    """Holds the creators registered by init_libnvinfer_plugins."""

    def __init__(self) -> None:
        self._creators: dict[tuple[str, str, str], IPluginCreator | IPluginCreatorV3One] = {}
        self._namespaces: set[str] = set()

    def _add(self, definition: PluginDefinition, namespace: str) -> None:
        creator_type = IPluginCreatorV3One if definition.v3 else IPluginCreator
        self._creators[(definition.name, definition.version, namespace)] = creator_type(definition, namespace)

    def _register_portable(self, namespace: str) -> None:
        self._namespaces.add(namespace)
        for definition in PLUGIN_DEFINITIONS.values():
            self._add(definition, namespace)

    def get_creator(self, type: str, version: str, plugin_namespace: str = "") -> IPluginCreator | IPluginCreatorV3One | None:
        return self._creators.get((type, version, plugin_namespace))

    def get_plugin_creator(self, type: str, version: str, plugin_namespace: str = "") -> IPluginCreator | None:
        creator = self.get_creator(type, version, plugin_namespace)
        return creator if isinstance(creator, IPluginCreator) else None

    @property
    def all_creators(self) -> list[IPluginCreator | IPluginCreatorV3One]:
        return list(self._creators.values())

    @property
    def plugin_creator_list(self) -> list[IPluginCreator]:
        return [c for c in self._creators.values() if isinstance(c, IPluginCreator)]


_REGISTRY = IPluginRegistry()


def get_plugin_registry() -> IPluginRegistry:
    return _REGISTRY


def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
    """Register the portable BERT plugins under ``namespace``; their errors go to ``logger``."""
    _PluginLogger.logger = logger
    _REGISTRY._register_portable(namespace)
    return True

