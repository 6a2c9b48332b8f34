"""How to build it: templates, rendering, the Docker engine, base images, toolchain images, builds."""
