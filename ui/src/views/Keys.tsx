// API keys: names, permissions, rate limits and where they come from (never a hash or a key);
// create one (the gateway generates it and answers it this once: shown with a copy button);
// delete. Both writes carry the config's ETag as If-Match, like a config PUT.

import { useState, type FormEvent } from 'react';
import { ApiError, describe } from '../api';
import { useSession } from '../context';
import type { Key } from '../types';
import { useApiGet } from '../useApi';

export function KeysView() {
  const { api } = useSession();
  const { data, error, reload } = useApiGet<{ keys: Key[] }>('/_kairos/keys');
  const [name, setName] = useState('');
  const [permissions, setPermissions] = useState('');
  const [rps, setRps] = useState('');
  const [burst, setBurst] = useState('');
  const [created, setCreated] = useState<{ name: string; key: string } | null>(null);
  const [message, setMessage] = useState<{ ok: boolean; text: string } | null>(null);
  const [copied, setCopied] = useState(false);
  const [busy, setBusy] = useState(false);

  const etag = async () => (await api.get('/_kairos/config')).etag;

  const create = async (e: FormEvent) => {
    e.preventDefault();
    setMessage(null);
    setCreated(null);
    setCopied(false);
    const body: Record<string, unknown> = {
      name: name.trim(),
      permissions: permissions
        .split(',')
        .map((p) => p.trim())
        .filter(Boolean),
    };
    if (rps.trim()) body.rate_limit = { rps: Number(rps), burst: burst.trim() ? Number(burst) : Math.max(1, Math.ceil(Number(rps))) };
    setBusy(true);
    try {
      const { data: res } = await api.request<{ name: string; key: string }>('POST', '/_kairos/keys', { body, ifMatch: await etag() });
      setCreated({ name: res.name, key: res.key });
      setName('');
      setPermissions('');
      setRps('');
      setBurst('');
      reload();
    } catch (err) {
      const errors = err instanceof ApiError ? (err.body?.errors ?? []) : [];
      setMessage({
        ok: false,
        text:
          err instanceof ApiError && err.status === 409
            ? `A key named "${body.name}" exists already.`
            : `${describe(err)}${errors.map((x) => ` ${x.path}: ${x.message}`).join(';')}`,
      });
    } finally {
      setBusy(false);
    }
  };

  const remove = async (k: string) => {
    if (!window.confirm(`Delete the key "${k}"? Clients using it are refused from then on.`)) return;
    setBusy(true);
    try {
      await api.request('DELETE', `/_kairos/keys/${encodeURIComponent(k)}`, { ifMatch: await etag() });
      setMessage({ ok: true, text: `Key "${k}" deleted.` });
      reload();
    } catch (err) {
      setMessage({ ok: false, text: describe(err) });
    } finally {
      setBusy(false);
    }
  };

  const copy = async () => {
    if (!created) return;
    try {
      await navigator.clipboard.writeText(created.key);
      setCopied(true);
    } catch {
      // No clipboard permission: select the text for a manual copy.
      const el = document.getElementById('new-key');
      if (el) window.getSelection()?.selectAllChildren(el);
    }
  };

  return (
    <>
      {error && <p className="error" role="alert">{error}</p>}
      <div className="scroll">
        <table data-testid="keys-table">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Permissions</th>
              <th scope="col">Rate limit</th>
              <th scope="col">Tenant</th>
              <th scope="col">Source</th>
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {(data?.keys ?? []).map((k) => (
              <tr key={k.name} data-name={k.name}>
                <th scope="row">{k.name}</th>
                <td>{k.permissions.join(', ') || '–'}</td>
                <td>{k.rate_limit ? `${k.rate_limit.rps}/s, burst ${k.rate_limit.burst}` : '–'}</td>
                <td>{k.tenant ?? '–'}</td>
                <td>{k.source}</td>
                <td>
                  {k.source === 'hash' && !k.tenant && (
                    <button type="button" onClick={() => remove(k.name)} disabled={busy} aria-label={`Delete key ${k.name}`}>
                      Delete
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <section aria-labelledby="new-key-h">
        <h2 id="new-key-h">Create a key</h2>
        <form className="stack" onSubmit={create}>
          <label>
            Name <input required value={name} onChange={(e) => setName(e.target.value)} pattern="[A-Za-z0-9_.\-]+" />
          </label>
          <label>
            Permissions (comma-separated) <input value={permissions} onChange={(e) => setPermissions(e.target.value)} />
          </label>
          <label>
            Rate limit, requests/s (optional) <input inputMode="decimal" value={rps} onChange={(e) => setRps(e.target.value)} />
          </label>
          <label>
            Burst (optional) <input inputMode="numeric" value={burst} onChange={(e) => setBurst(e.target.value)} />
          </label>
          <button type="submit" disabled={busy}>
            Create key
          </button>
        </form>
        <div role="status" aria-live="polite">
          {message && <p className={message.ok ? 'ok' : 'error'}>{message.text}</p>}
          {created && (
            <div className="once" data-testid="created-key">
              <p>
                Key <strong>{created.name}</strong> created. Copy it now: it is shown this once and the gateway keeps only its hash.
              </p>
              <code id="new-key" data-testid="new-key">
                {created.key}
              </code>{' '}
              <button type="button" onClick={copy}>
                {copied ? 'Copied' : 'Copy'}
              </button>
            </div>
          )}
        </div>
      </section>
    </>
  );
}
