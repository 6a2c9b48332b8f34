"""The container toolkit: the only code that starts containers, creates networks and builds, pulls or
imports images (tests/unit/test_layers.py checks it). Other layers only ask the engine about what
exists (images.get, stats, exec into a container the toolkit started).

engine.py   find or start dockerd; client()
build.py    build_image(): Dockerfile text + files → image, the host CA bundle always in the context
images.py   render()/ensure_image(): get an image by tag or build it from a Jinja template; pull, import_rootfs
run.py      run_once(): one command in a fresh container, exit code + log, always removed;
            start_detached(): a labelled long-lived container to exec into (the source build)
server.py   Server: a long-running container (testcontainers), ready by wait strategy, always removed
networks.py labelled_network(): a user-defined bridge network, ours removed from it on the way out
labels.py   run/role/owner labels on everything started; cleanup_leftovers() after a crash

Container-side scripts are files in the resources/ folder of the package that reads their output
(kvlab/resources/, smoke/resources/, images/resources/), not here: a script and its parser change
together, and this bottom layer stays free of vLLM and kvlab knowledge. run.script_mount() mounts
one such file alone under /deploylab; the repository is never mounted.
"""
