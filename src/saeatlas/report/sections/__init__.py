"""The report's sections, in page order.  Each module has its `ID` (the section's stable HTML id: the tests
look for them), its `TITLE`, pure functions that read the results into rows and values, and `render(results)`
that turns them into the section's markup (a section whose results are missing says "not run")."""

from . import absorption, concepts, controls, correlations, glance, heatmaps, pairs, saes, study

MODULES = [glance, study, saes, heatmaps, correlations, controls, concepts, pairs, absorption]
