/**
 * Where cursors live between connections and page loads. A cursor is the
 * position of the last message the application handled on a topic; with it
 * a reconnecting (or reloaded) client resumes exactly where it left off.
 *
 * Invariant: keys include the user, so one browser shared by two users
 * never resumes one user's subscription from the other's position.
 */

/** A place to keep cursors. Methods may be synchronous or return promises. */
export interface CursorStore {
  get(key: string): string | null | undefined | Promise<string | null | undefined>;
  set(key: string, cursor: string): void | Promise<void>;
  delete(key: string): void | Promise<void>;
}

/** Cursors in memory: they survive reconnects, not a restart. */
export class MemoryCursorStore implements CursorStore {
  private readonly map = new Map<string, string>();
  get(key: string): string | undefined {
    return this.map.get(key);
  }
  set(key: string, cursor: string): void {
    this.map.set(key, cursor);
  }
  delete(key: string): void {
    this.map.delete(key);
  }
}

/** The part of the Web Storage API the store uses. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/**
 * Cursors in `localStorage` (or any Web Storage): a page reload resumes
 * where the previous page stopped. Storage errors (quota, private mode) are
 * swallowed: the worst case is a replay the SDK de-duplicates, never a loss.
 */
export class LocalStorageCursorStore implements CursorStore {
  constructor(
    private readonly storage: StorageLike = (globalThis as { localStorage?: StorageLike }).localStorage as StorageLike,
    private readonly prefix = 'switchyard.cursor:',
  ) {
    if (!storage) throw new TypeError('LocalStorageCursorStore needs localStorage (or a Storage passed in)');
  }
  get(key: string): string | null {
    try {
      return this.storage.getItem(this.prefix + key);
    } catch {
      return null;
    }
  }
  set(key: string, cursor: string): void {
    try {
      this.storage.setItem(this.prefix + key, cursor);
    } catch {
      /* quota or disabled storage: keep going with the in-memory cursor */
    }
  }
  delete(key: string): void {
    try {
      this.storage.removeItem(this.prefix + key);
    } catch {
      /* see set() */
    }
  }
}

/** `localStorage` when the platform has a working one, memory otherwise. */
export function defaultCursorStore(): CursorStore {
  try {
    const ls = (globalThis as { localStorage?: StorageLike }).localStorage;
    if (ls) {
      const probe = 'switchyard.cursor:__probe__';
      ls.setItem(probe, '1');
      ls.removeItem(probe);
      return new LocalStorageCursorStore(ls);
    }
  } catch {
    /* e.g. storage disabled: fall through */
  }
  return new MemoryCursorStore();
}

/** The store key of a user's cursor on a topic. */
export function cursorKey(user: string, topic: string): string {
  return `${encodeURIComponent(user)}:${encodeURIComponent(topic)}`;
}
