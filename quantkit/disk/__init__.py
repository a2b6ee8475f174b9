"""Where quantkit keeps things on disk and how it writes them, the bottom layer: the cache
folder (`QUANTKIT_CACHE`) and atomic writes (build in `<x>.partial`, rename when done, so a
crash never leaves a file or folder that looks finished; `<out>.quarantine` for an artifact
that failed its checks), and a lock (`<x>.lock`) for what two processes may build at once.

Takes paths; knows nothing about models or formats. Every stage may import it; it imports
only `quantkit.errors`."""
