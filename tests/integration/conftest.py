"""One real embedded broker per test session; every test gets its own topics (a unique topic
prefix), consumer groups (app id) and data folder, so tests never see each other's records."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker, create_topics
from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.settings import Settings, load_settings
from pipeline.streams.runner import WorkerProcess

INTEGRATION_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items):
    # A pytestmark in a conftest marks nothing; mark this folder's tests here so that
    # -m "not integration" really leaves out everything that starts a broker or chDB.
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker.start(log) as running:
        yield running


@dataclass
class PipelineSandbox:
    bootstrap: str
    root: Path
    prefix: str
    app_id: str
    workers: list[WorkerProcess] = field(default_factory=list)
    codec: AvroCodec = field(default_factory=lambda: AvroCodec(EmbeddedRegistry()))

    def settings_file(self, name: str = "threadline.toml", extra: str = "") -> Path:
        path = self.root / name
        path.write_text(f"""
[kafka]
topic_prefix = "{self.prefix}"
partitions = 4

[mail]
blob_dir = "{self.root / 'blobs'}"

[worker]
app_id = "{self.app_id}"
batch_size = 500
batch_window_s = 0.1
{extra}
""")
        return path

    def settings(self, settings_file: Path | None = None) -> Settings:
        return load_settings(settings_file or self.settings_file(),
                             environ={"THREADLINE_KAFKA_BOOTSTRAP": self.bootstrap})

    def start_worker(self, *, generation: int = 0, name: str = "w0", settings_file: Path | None = None,
                     data_dir: Path | None = None) -> WorkerProcess:
        worker = WorkerProcess.start(bootstrap=self.bootstrap, data_dir=data_dir or self.root / name,
                                     generation=generation, log_path=self.root / f"{name}.log",
                                     settings_file=settings_file or self.settings_file())
        self.workers.append(worker)
        return worker


@pytest.fixture
def sandbox(broker, tmp_path):
    box = PipelineSandbox(broker.bootstrap, tmp_path, prefix=f"t{uuid.uuid4().hex[:8]}.",
                          app_id=f"tl{uuid.uuid4().hex[:8]}")
    create_topics(box.settings().kafka, broker.bootstrap)
    yield box
    for worker in box.workers:
        worker.kill()
