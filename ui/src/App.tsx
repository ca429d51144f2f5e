// The shell: login, the header with the stream state and logout, the main navigation, and hash
// routing (#/routes...), so the gateway serves one index.html and needs no fallback.

import { Suspense, lazy, useEffect, useMemo, useRef, useState, type FormEvent } from 'react';
import { Api, ApiError, loadToken, saveToken } from './api';
import { SessionContext, useLive } from './context';
import { hashView } from './hash';
import { LiveFeed } from './stream';
import { Dashboard } from './views/Dashboard';
import { RoutesView } from './views/Routes';
import { UpstreamsView } from './views/Upstreams';
import { LogsView } from './views/Logs';
import { KeysView } from './views/Keys';
import { TenantsView } from './views/Tenants';
import { CacheView } from './views/Cache';

// The editor (CodeMirror, the schema validator, the diff) is loaded when the Config view opens.
const ConfigView = lazy(() => import('./views/Config').then((m) => ({ default: m.ConfigView })));

const VIEWS = [
  { id: 'dashboard', label: 'Dashboard', component: Dashboard },
  { id: 'routes', label: 'Routes', component: RoutesView },
  { id: 'upstreams', label: 'Upstreams', component: UpstreamsView },
  { id: 'config', label: 'Config', component: ConfigView },
  { id: 'logs', label: 'Logs', component: LogsView },
  { id: 'keys', label: 'Keys', component: KeysView },
  { id: 'tenants', label: 'Tenants', component: TenantsView },
  { id: 'cache', label: 'Cache', component: CacheView },
] as const;

function currentView(): string {
  const id = hashView();
  return VIEWS.some((v) => v.id === id) ? id : 'dashboard';
}

export function App() {
  const [token, setToken] = useState<string | null>(() => loadToken());
  const [notice, setNotice] = useState<string | null>(null);
  const logout = (message: string | null) => {
    saveToken(null);
    setToken(null);
    setNotice(message);
  };
  if (!token) {
    return (
      <Login
        notice={notice}
        onLogin={(t) => {
          saveToken(t);
          setNotice(null);
          setToken(t);
        }}
      />
    );
  }
  return <Shell token={token} onLogout={logout} />;
}

function Login({ notice, onLogin }: { notice: string | null; onLogin: (token: string) => void }) {
  const [value, setValue] = useState('');
  const [error, setError] = useState<string | null>(notice);
  const [busy, setBusy] = useState(false);
  const input = useRef<HTMLInputElement>(null);
  // The first view is usable from here: the browser test reads this mark (first view interactive).
  useEffect(() => {
    performance.mark('kairos:login-ready');
  }, []);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const token = value.trim();
    if (!token) {
      setError('Enter the admin token (admin.token in the gateway config).');
      return;
    }
    setBusy(true);
    setError(null);
    try {
      await new Api(token).get('/_kairos/status');
      onLogin(token);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        setError('Wrong token: the gateway refused it (401). Check admin.token in its config.');
      } else if (err instanceof ApiError && err.status === 429) {
        const after = err.headers.get('Retry-After');
        setError(`Too many wrong tokens from this address: try again${after ? ` in ${after} s` : ' later'}.`);
      } else {
        setError(`Could not reach the admin API: ${err instanceof Error ? err.message : String(err)}`);
      }
      input.current?.focus();
    } finally {
      setBusy(false);
    }
  };
  return (
    <main className="login" id="main">
      <h1>Kairos admin</h1>
      <form onSubmit={submit} aria-describedby={error ? 'login-error' : undefined}>
        <label htmlFor="token">Admin token</label>
        <input
          id="token"
          ref={input}
          type="password"
          autoComplete="current-password"
          value={value}
          onChange={(e) => setValue(e.target.value)}
          aria-invalid={error ? true : undefined}
        />
        <button type="submit" disabled={busy}>
          Sign in
        </button>
        {error && (
          <p id="login-error" className="error" role="alert">
            {error}
          </p>
        )}
        <p className="hint">The token is kept in this tab only (session storage) and sent as a header.</p>
      </form>
    </main>
  );
}

function Shell({ token, onLogout }: { token: string; onLogout: (message: string | null) => void }) {
  const session = useMemo(() => {
    const expired = () => onLogout('The gateway no longer accepts this token (401): sign in again.');
    const api = new Api(token, expired);
    return { api, feed: new LiveFeed(api, expired) };
  }, [token]);
  useEffect(() => {
    session.feed.start();
    return () => session.feed.stop();
  }, [session]);
  const [view, setView] = useState(currentView);
  const heading = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    const onHash = () => {
      setView(currentView());
      // Move focus to the new view's heading so keyboard and screen reader users land there.
      requestAnimationFrame(() => heading.current?.focus());
    };
    window.addEventListener('hashchange', onHash);
    return () => window.removeEventListener('hashchange', onHash);
  }, []);
  const active = VIEWS.find((v) => v.id === view) ?? VIEWS[0];
  const View = active.component;
  return (
    <SessionContext.Provider value={session}>
      <a className="skip" href="#main" onClick={(e) => { e.preventDefault(); heading.current?.focus(); }}>
        Skip to content
      </a>
      <header className="top">
        <span className="brand">Kairos admin</span>
        <StreamBadge />
        <button type="button" className="logout" onClick={() => onLogout(null)}>
          Sign out
        </button>
      </header>
      <nav aria-label="Main">
        <ul>
          {VIEWS.map((v) => (
            <li key={v.id}>
              <a href={`#/${v.id}`} aria-current={v.id === view ? 'page' : undefined}>
                {v.label}
              </a>
            </li>
          ))}
        </ul>
      </nav>
      <main id="main">
        <h1 ref={heading} tabIndex={-1}>
          {active.label}
        </h1>
        <Suspense fallback={<p>Loading…</p>}>
          <View key={active.id} />
        </Suspense>
      </main>
    </SessionContext.Provider>
  );
}

function StreamBadge() {
  const live = useLive();
  const text = { connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…', closed: 'offline' }[live.status];
  return (
    <span className={`badge stream-${live.status}`} role="status" aria-live="polite" data-testid="stream-status">
      Stream: {text}
    </span>
  );
}
