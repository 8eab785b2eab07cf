"""``repint verify``'s data check: do the images the store was ingested from still hold what they held?

For each split whose ingest is complete, the source is rebuilt from the store's ``data_<split>`` spec
and compared with what ingest recorded: ``data_fingerprint_<split>`` (the same files, ids and labels)
and ``data_contents_<split>`` (each chunk's content hash, :mod:`repint.contents`; only the chunks whose
files' size or time changed are read again). A store whose images changed is an error naming the
chunks and a few files: its results describe other images, and ``repint run`` again re-ingests them.
Images that cannot be reached from here (another machine's folder) are a warning, not an error.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["check_data"]


class _Report(Protocol):
    def error(self, message: str, path: str | None = None) -> None: ...

    def warning(self, message: str, path: str | None = None) -> None: ...


def check_data(attrs: dict[str, Any], split: str, report: _Report) -> None:
    """Add to ``report`` what differs between ``split``'s images now and when they were ingested."""
    from repint.contents import changed_chunks, chunk_files
    from repint.data import source_from_spec

    spec, record = attrs.get(f"data_{split}"), attrs.get(f"data_contents_{split}")
    where = f"ingest/{split}"
    if not spec:
        return
    if not record:
        report.warning(f"the {split} images' content hashes are not recorded (a store from before they were): "
                       "cannot check that the images are those ingested; `repint run` records them", where)
        return
    try:
        src = source_from_spec(spec)
    except (FileNotFoundError, PermissionError) as exc:  # the data is elsewhere: not the store's fault
        report.warning(f"cannot check the {split} images against the store: {type(exc).__name__}: {exc}", where)
        return
    except Exception as exc:  # noqa: BLE001 - reachable, but no longer a usable source: not what was ingested
        report.error(f"the {split} images are not those ingested: they no longer load ({type(exc).__name__}: {exc}); "
                     "fix them, then `repint run` again ingests them", where)
        return
    if src.fingerprint() != attrs.get(f"data_fingerprint_{split}"):
        report.error(f"the {split} images are not those ingested: files were added, removed or relabelled "
                     f"since ({len(src)} now); `repint run` again ingests them and recomputes every later stage",
                     where)
        return
    try:
        changed = changed_chunks(src, record)
    except OSError as exc:
        report.warning(f"cannot read the {split} images to check them: {exc}", where)
        return
    if changed:
        names = [n for c in changed[:3] for n in chunk_files(src, int(record["chunk"]), c)[:2]]
        report.error(f"the {split} images of chunks {changed[:10]} changed since they were ingested (their content "
                     f"hash differs, e.g. among {', '.join(names)}): the store's results describe other images; "
                     "`repint run` again re-ingests them and recomputes every later stage", where)
