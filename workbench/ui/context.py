"""What every tab gets: the service layer (runs, groups, exports, analyses) of one home folder."""

from workbench.service import Workbench as WorkbenchContext

__all__ = ["WorkbenchContext"]
