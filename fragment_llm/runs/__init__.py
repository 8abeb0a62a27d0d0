"""Run directories without torch: their paths and records, claiming one, tables of runs, statistics over
repeated runs and plots. The browsing commands import nothing above this package."""
