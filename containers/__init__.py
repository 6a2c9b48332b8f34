"""The container toolkit: the only code that talks to the Docker engine.

engine.py   find or start dockerd; client()
build.py    build_image(): Dockerfile text + files → image, the host CA bundle always in the context
images.py   render()/ensure_image(): get an image by tag or build it from a Jinja template
run.py      run_once(): one command in a fresh container, exit code + log, always removed
server.py   Server: a long-running container (testcontainers), ready by wait strategy, always removed
labels.py   run/role/owner labels on everything started; cleanup_leftovers() after a crash

Container-side scripts are files in the resources/ folder of the package that reads their output
(kvlab/resources/, smoke/resources/, images/resources/), not here: a script and its parser change
together, and this bottom layer stays free of vLLM and kvlab knowledge. run.script_mount() mounts
one such file alone under /deploylab; the repository is never mounted.
"""
