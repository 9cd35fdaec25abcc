"""The one stand-in Grid for strategy unit tests: real Flower messages, no engine.

Import both names into a test module (`from stub_grid import StubGrid,
task_identity`): the autouse fixture gives messages built outside a run the
task identity Flower's `Message` expects.
"""

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


class StubGrid:
    """Only what strategies call on a Grid at full participation."""

    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return self.node_ids
