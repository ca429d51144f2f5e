// The config editor: the running config (secrets redacted) in CodeMirror with JSON Schema
// validation as you type, a server dry run whose errors are shown at their lines, a diff
// against the running config before applying, apply with If-Match (a 412 fetches the config
// someone else applied and shows their change), and the reload history.

import { useCallback, useEffect, useRef, useState } from 'react';
import { EditorView } from '@codemirror/view';
import { Validator } from '@cfworker/json-schema';
import { ApiError, describe, type ErrorBody } from '../api';
import { useLive, useSession } from '../context';
import { DiffView } from '../Diff';
import { createEditor, displayPath, schemaProblems, serverProblems, showServerProblems, syntaxProblems, type Problem } from '../editor';
import { fmtTime } from '../format';
import type { Reload } from '../types';
import { useApiGet } from '../useApi';

const pretty = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;

/** The paths (gateway style) of the values GET /_kairos/config redacted. */
export function redactedPaths(v: unknown, path: string[] = []): string[] {
  if (typeof v === 'string') return v.includes('<redacted>') ? [displayPath(path)] : [];
  if (Array.isArray(v)) return v.flatMap((x, i) => redactedPaths(x, [...path, String(i)]));
  if (v && typeof v === 'object') return Object.entries(v).flatMap(([k, x]) => redactedPaths(x, [...path, k]));
  return [];
}

interface Running {
  text: string;
  etag: string | null;
  /** Where the gateway redacted a secret. */
  redacted: string[];
}

type Outcome =
  | { kind: 'none' }
  | { kind: 'info'; text: string }
  | { kind: 'error'; text: string }
  | { kind: 'conflict'; base: string; theirs: string };

export function ConfigView() {
  const { api } = useSession();
  const live = useLive();
  const host = useRef<HTMLDivElement>(null);
  const view = useRef<EditorView | null>(null);
  const validator = useRef<Validator | null>(null);
  const [running, setRunning] = useState<Running | null>(null);
  const [text, setText] = useState('');
  const [problems, setProblems] = useState<Problem[]>([]);
  const [serverErrors, setServerErrors] = useState<Problem[]>([]);
  const [reviewing, setReviewing] = useState(false);
  const [busy, setBusy] = useState(false);
  const [outcome, setOutcome] = useState<Outcome>({ kind: 'none' });
  const [loadError, setLoadError] = useState<string | null>(null);
  const history = useApiGet<{ reloads: Reload[] }>('/_kairos/config/history');
  // A `config` event for a config this editor did not apply: someone else changed it since it
  // was read (Apply would be refused with 412). `own` holds the hashes this editor applied (the
  // event may come before the PUT's answer); events from before the view opened are ignored.
  const own = useRef(new Set<string>());
  const openedWith = useRef(live.configHash);
  const [elsewhere, setElsewhere] = useState<string | null>(null);
  useEffect(() => {
    if (live.configHash && live.configHash !== openedWith.current) setElsewhere(live.configHash);
  }, [live.configHash]);

  const recheck = useCallback((v: EditorView) => {
    setText(v.state.doc.toString());
    setProblems([...syntaxProblems(v), ...schemaProblems(v.state, validator.current)]);
  }, []);

  const load = useCallback(async () => {
    const { data, etag } = await api.get<unknown>('/_kairos/config');
    return { text: pretty(data), etag, redacted: redactedPaths(data) };
  }, [api]);

  useEffect(() => {
    let cancelled = false;
    (async () => {
      try {
        const [cfg, schema] = await Promise.all([
          load(),
          api.get<object>('/_kairos/config/schema').then((r) => r.data).catch(() => null),
        ]);
        if (cancelled || !host.current) return;
        if (schema) validator.current = new Validator(schema as never, '2020-12', false);
        setRunning(cfg);
        setText(cfg.text);
        view.current = createEditor(host.current, cfg.text, {
          validator: () => validator.current,
          onChange: (v) => {
            setServerErrors([]);
            recheck(v);
          },
          label: 'Config (JSON)',
        });
        if (!schema) setOutcome({ kind: 'error', text: 'The config schema could not be read: only the syntax is checked as you type.' });
        recheck(view.current);
      } catch (e) {
        if (!cancelled) setLoadError(describe(e));
      }
    })();
    return () => {
      cancelled = true;
      view.current?.destroy();
      view.current = null;
    };
  }, [api, load, recheck]);

  // Another change applied elsewhere: refresh the reload history.
  const reloadHistory = history.reload;
  useEffect(() => {
    if (live.configHash) reloadHistory();
  }, [live.configHash, reloadHistory]);

  const current = () => view.current?.state.doc.toString() ?? text;

  const showErrors = (body: ErrorBody | null, fallback: string) => {
    const errors = body?.errors ?? [];
    if (view.current && errors.length) {
      const p = serverProblems(view.current.state, errors);
      setServerErrors(p);
      showServerProblems(view.current, p);
    }
    setOutcome({ kind: 'error', text: body?.error?.message ?? fallback });
  };

  const checkOnServer = async () => {
    setBusy(true);
    setOutcome({ kind: 'none' });
    try {
      const { data } = await api.request<{ valid: boolean; diff: Record<string, string[]> }>('POST', '/_kairos/config/validate', {
        text: current(),
      });
      setServerErrors([]);
      const changes = Object.entries(data.diff ?? {})
        .filter(([, v]) => Array.isArray(v) && v.length)
        .map(([k, v]) => `${k.replace(/_/g, ' ')}: ${v.join(', ')}`);
      setOutcome({ kind: 'info', text: `Valid. ${changes.length ? `Applying would change ${changes.join('; ')}.` : 'Applying would change no route or upstream.'}` });
    } catch (e) {
      if (e instanceof ApiError && e.status === 400) showErrors(e.body, describe(e));
      else setOutcome({ kind: 'error', text: describe(e) });
    } finally {
      setBusy(false);
    }
  };

  const apply = async () => {
    if (!running) return;
    const edited = current();
    // A secret the gateway did not show (a value, or a URL's userinfo) may stay `<redacted>`:
    // the gateway keeps the running value at that path (or refuses, naming the path, where it
    // has none).
    setBusy(true);
    try {
      const { data } = await api.request<{ applied?: { config_hash?: string; unchanged?: boolean } }>('PUT', '/_kairos/config', {
        text: edited,
        ifMatch: running.etag ?? undefined,
      });
      if (data.applied?.config_hash) own.current.add(data.applied.config_hash);
      const fresh = await load();
      setRunning(fresh);
      setReviewing(false);
      setServerErrors([]);
      setOutcome({
        kind: 'info',
        text: data.applied?.unchanged ? 'Applied: the text equals the running config, nothing changed.' : `Applied (config ${data.applied?.config_hash?.slice(0, 12) ?? ''}).`,
      });
      history.reload();
    } catch (e) {
      if (e instanceof ApiError && e.status === 412) {
        // Someone else applied a config since this one was read: show what they changed.
        try {
          const fresh = await load();
          setOutcome({ kind: 'conflict', base: running.text, theirs: fresh.text });
          setRunning(fresh);
          // The editor now starts from their config.
          openedWith.current = live.configHash;
          setElsewhere(null);
        } catch (e2) {
          setOutcome({ kind: 'error', text: `The config changed since it was read, and could not be read again: ${describe(e2)}` });
        }
        setReviewing(false);
      } else if (e instanceof ApiError && e.status === 400) {
        showErrors(e.body, describe(e));
        setReviewing(false);
      } else {
        setOutcome({ kind: 'error', text: describe(e) });
      }
    } finally {
      setBusy(false);
    }
  };

  const discard = () => {
    if (!running || !view.current) return;
    view.current.dispatch({ changes: { from: 0, to: view.current.state.doc.length, insert: running.text } });
    setReviewing(false);
    setOutcome({ kind: 'none' });
  };

  const dirty = running !== null && text !== running.text;
  const changedElsewhere = elsewhere !== null && !own.current.has(elsewhere);
  const allProblems = [...problems, ...serverErrors].sort((a, b) => a.line - b.line);
  return (
    <>
      {loadError && <p className="error" role="alert">{loadError}</p>}
      <p className="hint">
        Secrets are shown as <code>"&lt;redacted&gt;"</code>; <code>${'{'}ENV{'}'}</code> references are kept. Ctrl-F searches; Tab leaves the
        editor.
      </p>
      {running && running.redacted.length > 0 && (
        <p className="hint" data-testid="redacted-note">
          The gateway does not show {running.redacted.length === 1 ? 'one secret' : `${running.redacted.length} secrets`} (
          {running.redacted.map((p, i) => (
            <span key={p}>
              {i > 0 && ', '}
              <code>{p}</code>
            </span>
          ))}
          ): leave <code>&lt;redacted&gt;</code> where it is and the gateway keeps each secret when you apply; write a value, or an{' '}
          <code>${'{'}ENV{'}'}</code> reference, to change one.
        </p>
      )}
      {changedElsewhere && (
        <p className="error" role="status" data-testid="config-changed">
          The running config changed since this editor read it (another edit, a reload of the file or the config store). Applying
          will show that change first.
        </p>
      )}
      <div className="editor" ref={host} />
      <section aria-labelledby="problems-h">
        <h2 id="problems-h">Problems</h2>
        <div aria-live="polite" data-testid="problems">
          {allProblems.length === 0 ? (
            <p>None found as you type.</p>
          ) : (
            <ul className="problems">
              {allProblems.map((p, i) => (
                <li key={i} data-line={p.line} data-source={p.source}>
                  <button
                    type="button"
                    className="link"
                    onClick={() => {
                      view.current?.dispatch({ selection: { anchor: p.from }, effects: EditorView.scrollIntoView(p.from, { y: 'center' }) });
                      view.current?.focus();
                    }}
                  >
                    Line {p.line}
                  </button>
                  {p.path && (
                    <>
                      {' '}
                      <code>{p.path}</code>
                    </>
                  )}
                  : {p.message} <small>({p.source === 'server' ? 'gateway' : p.source})</small>
                </li>
              ))}
            </ul>
          )}
        </div>
      </section>
      <div className="actions">
        <button type="button" onClick={checkOnServer} disabled={busy || !running}>
          Check on server
        </button>
        <button type="button" onClick={() => setReviewing(true)} disabled={busy || !dirty}>
          Review changes
        </button>
        <button type="button" onClick={discard} disabled={busy || !dirty}>
          Discard changes
        </button>
      </div>
      <div role="status" aria-live="polite" data-testid="config-outcome">
        {outcome.kind === 'info' && <p className="ok">{outcome.text}</p>}
        {outcome.kind === 'error' && <p className="error">{outcome.text}</p>}
        {outcome.kind === 'conflict' && (
          <div className="conflict" data-testid="config-conflict">
            <p className="error">
              Not applied: someone else changed the config since you opened it (412). Their change is below; your edit is still in the
              editor. Review again to apply yours over theirs.
            </p>
            <DiffView a={outcome.base} b={outcome.theirs} label="The other change" testId="conflict-diff" />
          </div>
        )}
      </div>
      {reviewing && running && (
        <section aria-labelledby="review-h" className="review">
          <h2 id="review-h">Changes against the running config</h2>
          <DiffView a={running.text} b={current()} label="Your changes" testId="config-diff" />
          <div className="actions">
            <button type="button" onClick={apply} disabled={busy}>
              Apply
            </button>
            <button type="button" onClick={() => setReviewing(false)} disabled={busy}>
              Back to editing
            </button>
          </div>
        </section>
      )}
      <section aria-labelledby="history-h">
        <h2 id="history-h">Reload history</h2>
        {history.error && <p className="error">{history.error}</p>}
        <div className="scroll">
          <table data-testid="reload-history">
            <thead>
              <tr>
                <th scope="col">When</th>
                <th scope="col">Trigger</th>
                <th scope="col">Outcome</th>
                <th scope="col">Config</th>
                <th scope="col">Errors</th>
              </tr>
            </thead>
            <tbody>
              {(history.data?.reloads ?? []).map((r, i) => (
                <tr key={i}>
                  <td>{fmtTime(r.ts)}</td>
                  <td>{r.trigger}</td>
                  <td>
                    <span className={`state state-${r.outcome}`}>{r.outcome}</span>
                  </td>
                  <td>
                    <code>{r.config_hash?.slice(0, 12) ?? '–'}</code>
                  </td>
                  <td>
                    {(r.errors ?? []).map((e, j) => (
                      <div key={j}>
                        {e.line ? `line ${e.line} ` : ''}
                        <code>{e.path}</code>: {e.message}
                      </div>
                    ))}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
    </>
  );
}
