"""Workflow tooling: node schemas, UI-workflow validation, UI → API conversion, a test executor.

Cheap to import (JSON and dataclasses only). Entry points:

- :func:`load_object_info`, :func:`object_info_from_classes`, :func:`merge_object_info` (schema)
- :func:`validate_workflow`, :func:`validate_api_prompt`, :class:`Problem` (validate)
- :func:`ui_to_api` (convert)
- :func:`execute_api_prompt`, :func:`stand_in` (execute)
- :func:`add_cli` (cli: ``validate-workflow`` and ``workflow-to-api`` subcommands)
"""
from .convert import ui_to_api
from .execute import ExecutionResult, execute_api_prompt, stand_in, topological_order
from .schema import (
    find_object_info_path,
    load_object_info,
    merge_object_info,
    node_info,
    object_info_from_classes,
)
from .validate import Problem, errors_only, validate_api_prompt, validate_workflow

__all__ = [
    "ExecutionResult", "Problem", "errors_only", "execute_api_prompt", "find_object_info_path",
    "load_object_info", "merge_object_info", "node_info", "object_info_from_classes", "stand_in",
    "topological_order", "ui_to_api", "validate_api_prompt", "validate_workflow",
]
