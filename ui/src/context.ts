import { createContext, useContext, useSyncExternalStore } from 'react';
import type { Api } from './api';
import type { LiveFeed, LiveState } from './stream';

export interface Session {
  api: Api;
  feed: LiveFeed;
}

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const s = useContext(SessionContext);
  if (!s) throw new Error('useSession outside a signed-in page');
  return s;
}

export function useLive(): LiveState {
  const { feed } = useSession();
  return useSyncExternalStore(feed.subscribe, feed.getState);
}
