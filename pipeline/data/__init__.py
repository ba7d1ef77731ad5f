"""The Parquet data store: write, read, validate, batch."""

from pipeline.data.dataset import DatasetInfo, Split
from pipeline.data.frames import import_arrays, import_dataframe
from pipeline.data.imports import ensure_dataset, import_dataset
from pipeline.data.stats import feature_stats
from pipeline.data.store import Store
from pipeline.data.validate import DataError

__all__ = ["DataError", "DatasetInfo", "Split", "Store", "ensure_dataset", "feature_stats", "import_arrays",
           "import_dataframe", "import_dataset"]
