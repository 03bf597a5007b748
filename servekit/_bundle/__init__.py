"""Bundles: an app's code, locked requirements and deployment files as one verifiable archive.

- `files`: which project files go into `src/` (.gitignore, .servekitignore, secrets, sizes)
- `archive`: the reproducible tar.gz, and unpacking it
- `manifest`: `servekit.json` and the sha256 check of a bundle folder
- `requirements`: `requirements.lock`, resolved by uv
- `deploy_files`: Dockerfile, .dockerignore, Ray Serve config, KubeRay RayService
- `store`: the cache bundles are served from, and the local store `servekit bundles` manages
"""
