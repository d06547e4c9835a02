"""Training sinks the tests share."""

from workbench.training import MemorySink


class StopAt(MemorySink):
    """Asks the loop to stop once it reaches an iteration, as a user's cancel would."""

    def __init__(self, iteration: int) -> None:
        super().__init__()
        self.stop_at = iteration

    def should_stop(self) -> bool:
        return bool(self.last_progress) and self.last_progress["iteration"] >= self.stop_at
