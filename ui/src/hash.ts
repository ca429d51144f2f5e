// Hash routing (#/logs?request_id=...): the view is the part before `?`, links between views
// carry their parameters after it.

/** The query part of the hash, for links between views. */
export function hashParams(): URLSearchParams {
  const q = window.location.hash.split('?')[1];
  return new URLSearchParams(q ?? '');
}

/** The view named by the hash (`#/routes` -> `routes`). */
export function hashView(): string {
  return window.location.hash.replace(/^#\/?/, '').split('?')[0];
}
