import { useCallback, useEffect, useState } from 'react';
import { describe } from './api';
import { useSession } from './context';

/** GET `path` on mount (and on `reload()`); `error` is the failure's one-line description. */
export function useApiGet<T>(path: string | null) {
  const { api } = useSession();
  const [data, setData] = useState<T | null>(null);
  const [etag, setEtag] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [status, setStatus] = useState<number | null>(null);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    if (!path) return;
    const abort = new AbortController();
    setLoading(true);
    api
      .get<T>(path, abort.signal)
      .then((r) => {
        setData(r.data);
        setEtag(r.etag);
        setError(null);
        setStatus(r.status);
      })
      .catch((e) => {
        if (abort.signal.aborted) return;
        setError(describe(e));
        setStatus((e as { status?: number }).status ?? null);
      })
      .finally(() => !abort.signal.aborted && setLoading(false));
    return () => abort.abort();
  }, [api, path, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data, etag, error, status, loading, reload };
}
