"""The specs layer (pydantic): what a run is (``RunSpec``, ``make_spec``), the training recipes, and
the YAML catalogues users edit: suites (``bkdbench/suites/*.yaml``, loaded by ``specs.suites``) and
search spaces (the top-level ``search_spaces/*.yaml``, loaded by ``specs.search_spaces``).

Every layer reads specs; specs read only the core's registries (datasets, models, methods), to
validate names and parameters."""
from bkdbench.specs.columns import spec_columns
from bkdbench.specs.runspec import RunSpec, SpecError, check_spec, make_spec, with_pretrained

__all__ = ["RunSpec", "SpecError", "check_spec", "make_spec", "spec_columns", "with_pretrained"]
