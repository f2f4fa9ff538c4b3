from dss import cli
from dss.landscape.job import main

cli.run(main)
