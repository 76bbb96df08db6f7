import pytest


class ScanCountingTable(dict):
    """A plain-dict table that counts the passes over all of its entries (``items``, ``keys``,
    ``values`` or iteration), e.g. the steps' restore of their state after a reset."""

    scans = 0

    def items(self):
        self.scans += 1
        return super().items()

    def keys(self):
        self.scans += 1
        return super().keys()

    def values(self):
        self.scans += 1
        return super().values()

    def __iter__(self):
        self.scans += 1
        return super().__iter__()


@pytest.fixture
def scan_counting_table() -> ScanCountingTable:
    return ScanCountingTable()
