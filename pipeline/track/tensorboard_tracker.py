"""``log=tensorboard``: event files in ``RUN_DIR/tensorboard/`` (tensorboardX's writer), with hparams.

Every run writes the hparams plugin's session records beside its scalars: the flattened config
at the start, the status at the end. A sweep's trial also writes the experiment record, whose
columns are the swept keys and whose metrics are the final evaluation metrics, so
``tensorboard --logdir SWEEP_DIR/trials`` shows the sweep as one table; single runs under one
logdir are compared on every key (the plugin infers the table from their sessions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.hooks import RunInfo
from pipeline.track.tracker_base import Tracker, flat_config, need

EXPERIMENT_TAG = "_hparams_/experiment"
SESSION_START_TAG = "_hparams_/session_start_info"
SESSION_END_TAG = "_hparams_/session_end_info"


def _hparam_value(value: Any) -> bool | float | str | None:
    if value is None:
        return None
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)  # tuples (hidden layer sizes, ...) as their text


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def check(self) -> None:
        need("tensorboardX", "tensorboard")

    def start(self, run: RunInfo) -> None:
        writer = need("tensorboardX", "tensorboard").SummaryWriter
        self.writer = writer(logdir=str(Path(run.run_dir) / "tensorboard"), purge_step=run.first_step or None)
        self.hparams = {k: v for k, v in ((k, _hparam_value(v)) for k, v in flat_config(run.config).items())
                        if v is not None}
        self.swept = sorted(run.swept or {})
        self.final_tags: set[str] = set()
        self._summary(SESSION_START_TAG, session_start_info=self._session_start())

    def write(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
            if not tag.startswith("train/"):
                self.final_tags.add(tag)

    def flush(self) -> None:
        self.writer.flush()

    def stop(self, finished: bool) -> None:
        from tensorboardX.proto.api_pb2 import Status
        from tensorboardX.proto.plugin_hparams_pb2 import SessionEndInfo

        try:
            if self.swept:
                self._summary(EXPERIMENT_TAG, experiment=self._experiment())
            if finished:  # an interrupted run's session stays open: it resumes
                status = Status.Value("STATUS_SUCCESS")
                self._summary(SESSION_END_TAG, session_end_info=SessionEndInfo(status=status))
        finally:
            self.writer.close()

    def _session_start(self) -> Any:
        from tensorboardX.proto.plugin_hparams_pb2 import SessionStartInfo

        info = SessionStartInfo()
        for key, value in self.hparams.items():
            if isinstance(value, bool):
                info.hparams[key].bool_value = value
            elif isinstance(value, float):
                info.hparams[key].number_value = value
            else:
                info.hparams[key].string_value = value
        return info

    def _experiment(self) -> Any:
        """The sweep's table: its swept keys as columns, the final metrics (and the last train loss)."""
        from tensorboardX.proto.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo, MetricName

        types = {bool: "DATA_TYPE_BOOL", float: "DATA_TYPE_FLOAT64", str: "DATA_TYPE_STRING"}
        columns = [HParamInfo(name=key, type=DataType.Value(types[type(self.hparams[key])]))
                   for key in self.swept if key in self.hparams]
        metrics = [MetricInfo(name=MetricName(tag=tag)) for tag in sorted(self.final_tags | {"train/loss"})]
        return Experiment(hparam_infos=columns, metric_infos=metrics)

    def _summary(self, tag: str, **content: Any) -> None:
        """One record of the hparams plugin (what tensorboardX's ``add_hparams`` writes, in this run)."""
        from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
        from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

        data = HParamsPluginData(version=0, **content)
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams",
                                                                      content=data.SerializeToString()))
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, metadata=meta)]))
