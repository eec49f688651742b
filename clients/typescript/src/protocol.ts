/**
 * The wire frames of the JSON protocol (`switchyard.v1.json`), as the
 * gateway sends and accepts them; `docs/protocol.md` in the repository is
 * the reference. Only the JSON subprotocol is spoken by this SDK.
 *
 * Invariant: {@link parseServerFrame} never throws; anything that is not a
 * frame of the protocol comes back as `undefined`.
 */

export const SUBPROTOCOL = 'switchyard.v1.json';

export type ClientFrame =
  | { type: 'subscribe'; id: number; topic: string; cursor?: string; presence?: boolean }
  | { type: 'presence'; id: number; topic: string }
  | { type: 'unsubscribe'; id: number; topic: string }
  | { type: 'publish'; id: number; topic: string; payload: unknown }
  | { type: 'ping'; id: number }
  | { type: 'refresh'; id: number; token: string };

export interface MessageFrame {
  type: 'message';
  topic: string;
  id: string;
  cursor: string;
  payload: unknown;
  content_type?: string;
  created_at_ms?: number;
}

/** A user's first connection arrived in (`join`) or last left (`leave`) a presence channel. */
export interface PresenceChangeFrame {
  type: 'join' | 'leave';
  topic: string;
  /** The concrete channel, e.g. `Room-CHLT`. */
  channel: string;
  user: string;
  /** The user's client info (their token's `info` claim), on joins. */
  info?: unknown;
  /** A leave found after the user's node stopped heartbeating. */
  expired?: boolean;
}

export interface PresenceMember {
  user: string;
  connections: number;
  info?: unknown;
}

export interface ChannelPresence {
  channel: string;
  /** Distinct users and their connections over the fleet (never capped). */
  users: number;
  connections: number;
  /** Members, up to the gateway's cap over the whole answer. */
  members: PresenceMember[];
  /** More users than listed. */
  truncated: boolean;
}

export interface PresenceFrame {
  type: 'presence';
  id: number;
  topic: string;
  channels: ChannelPresence[];
}

export type ServerFrame =
  | { type: 'welcome'; connection_id: string; user: string }
  | {
      type: 'subscribed';
      id: number;
      topic: string;
      recovered: boolean;
      /** Set by the long-poll transport when a later poll lost continuity. */
      resync?: boolean;
    }
  | MessageFrame
  | { type: 'unsubscribed'; id: number; topic: string }
  | { type: 'published'; id: number }
  | { type: 'pong'; id: number }
  | { type: 'refreshed'; id: number }
  | { type: 'error'; id?: number; code: string; message: string; topic?: string }
  | { type: 'reconnect'; after_ms: number }
  | PresenceChangeFrame
  | PresenceFrame;

/** Close codes the gateway uses, and the ones the SDK synthesizes. */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  ProtocolError: 1002,
  Abnormal: 1006,
  InvalidData: 1007,
  TooLarge: 1009,
  /** The token expired on an open connection. */
  TokenExpired: 4001,
  /** SDK: the gateway refused the token (HTTP 401 before any connection). */
  Unauthorized: 4401,
  /** SDK: the gateway refused the client (HTTP 403, e.g. its Origin). */
  Forbidden: 4403,
  /** SDK: no answer to a ping in time; the connection is presumed dead. */
  PingTimeout: 4408,
  /** SDK: the browser reported it went offline. */
  Offline: 4409,
} as const;

const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isStr = (v: unknown): v is string => typeof v === 'string';

/** Parses one text frame from the gateway. */
export function parseServerFrame(text: string): ServerFrame | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  return toServerFrame(v);
}

/** Checks a decoded JSON value against the frame shapes. */
export function toServerFrame(v: unknown): ServerFrame | undefined {
  if (!isObj(v) || !isStr(v.type)) return undefined;
  switch (v.type) {
    case 'welcome':
      return { type: 'welcome', connection_id: isStr(v.connection_id) ? v.connection_id : '', user: isStr(v.user) ? v.user : '' };
    case 'subscribed':
      return isNum(v.id) && isStr(v.topic)
        ? { type: 'subscribed', id: v.id, topic: v.topic, recovered: v.recovered === true }
        : undefined;
    case 'message':
      if (!isStr(v.topic) || !isStr(v.id) || !isStr(v.cursor)) return undefined;
      return {
        type: 'message',
        topic: v.topic,
        id: v.id,
        cursor: v.cursor,
        payload: v.payload,
        ...(isStr(v.content_type) ? { content_type: v.content_type } : {}),
        ...(isNum(v.created_at_ms) ? { created_at_ms: v.created_at_ms } : {}),
      };
    case 'unsubscribed':
      return isNum(v.id) && isStr(v.topic) ? { type: 'unsubscribed', id: v.id, topic: v.topic } : undefined;
    case 'published':
    case 'pong':
    case 'refreshed':
      return isNum(v.id) ? { type: v.type, id: v.id } : undefined;
    case 'error':
      return {
        type: 'error',
        ...(isNum(v.id) ? { id: v.id } : {}),
        code: isStr(v.code) ? v.code : 'internal',
        message: isStr(v.message) ? v.message : '',
      };
    case 'reconnect':
      return { type: 'reconnect', after_ms: isNum(v.after_ms) && v.after_ms >= 0 ? v.after_ms : 0 };
    case 'join':
    case 'leave':
      if (!isStr(v.topic) || !isStr(v.channel) || !isStr(v.user)) return undefined;
      return {
        type: v.type,
        topic: v.topic,
        channel: v.channel,
        user: v.user,
        ...(v.info !== undefined ? { info: v.info } : {}),
        ...(v.expired === true ? { expired: true } : {}),
      };
    case 'presence': {
      if (!isNum(v.id) || !isStr(v.topic) || !Array.isArray(v.channels)) return undefined;
      const channels: ChannelPresence[] = [];
      for (const c of v.channels) {
        if (!isObj(c) || !isStr(c.channel) || !isNum(c.users) || !isNum(c.connections)) return undefined;
        const members: PresenceMember[] = [];
        for (const m of Array.isArray(c.members) ? c.members : []) {
          if (!isObj(m) || !isStr(m.user) || !isNum(m.connections)) return undefined;
          members.push({ user: m.user, connections: m.connections, ...(m.info !== undefined ? { info: m.info } : {}) });
        }
        channels.push({ channel: c.channel, users: c.users, connections: c.connections, members, truncated: c.truncated === true });
      }
      return { type: 'presence', id: v.id, topic: v.topic, channels };
    }
    default:
      return undefined;
  }
}

/**
 * The topic of a subscription the gateway ended on its own (after a token
 * refresh or a topology reload): its `error` frame has no id and says
 * "subscription to <topic> ended: <reason>".
 */
export function endedSubscriptionTopic(message: string): string | undefined {
  const m = /^subscription to (.+?) ended: /.exec(message);
  return m ? m[1] : undefined;
}
