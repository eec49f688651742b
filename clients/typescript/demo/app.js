// The live demo: one SwitchyardClient per chosen demo user, a News feed
// that shows which events arrived live and which were caught up after a
// reconnect, and a Chat box that publishes.
import { SwitchyardClient } from '/sdk/index.js';

const $ = (id) => document.getElementById(id);
const config = await (await fetch('/config.json')).json();

let client;
let counters;
let timer;

function show(id, value) {
  $(id).textContent = String(value);
}

function setState(state, transport) {
  const el = $('state');
  el.textContent = state;
  el.dataset.state = state;
  $('transport').textContent = transport ? `over ${transport}` : '';
  $('toggle').textContent = state === 'disconnected' ? 'Connect' : 'Disconnect';
}

function item(m, tag) {
  const li = document.createElement('li');
  li.dataset.id = m.id;
  li.dataset.n = String(m.payload?.n ?? '');
  if (tag) li.dataset.tag = tag;
  const text = m.payload?.headline ?? JSON.stringify(m.payload);
  li.append(document.createTextNode(`#${m.payload?.n ?? '?'} ${text}`));
  if (tag) {
    const t = document.createElement('span');
    t.className = `tag ${tag}`;
    t.textContent = tag === 'caught-up' ? 'caught up' : tag;
    li.append(t);
  }
  const id = document.createElement('span');
  id.className = 'id';
  id.textContent = m.id;
  li.append(id);
  return li;
}

function start(user) {
  if (client) client.disconnect();
  clearInterval(timer);
  history.replaceState(null, '', `?user=${user.id}`);
  for (const b of $('users').children) b.setAttribute('aria-pressed', String(b.dataset.user === user.id));
  $('feed').replaceChildren();
  $('chat-feed').replaceChildren();
  counters = { count: 0, caughtup: 0, dups: 0, unrecovered: 0 };
  for (const [k, v] of Object.entries(counters)) show(k, v);
  show('products', user.products.join(', '));
  show('resume', '');

  client = new SwitchyardClient({
    url: config.gateways,
    getToken: async () => {
      const r = await fetch(`/token?user=${encodeURIComponent(user.id)}`);
      if (!r.ok) throw new Error(`token endpoint answered ${r.status}`);
      return (await r.json()).token;
    },
    reconnect: { initialDelayMs: 500, maxDelayMs: 8000 },
  });
  window.switchyard = client; // for the browser test and the curious

  // Messages produced before the latest resumption are the ones missed
  // while away: they are shown as "caught up".
  let resumedAt = 0;
  let firstSubscribe = true;
  const startedAt = Date.now();
  const news = client.subscribe('News', {
    subscribed: (e) => {
      if (firstSubscribe) {
        show('resume', news.cursor || e.recovered ? '(resumed from the stored cursor)' : '(today\'s lookback window first)');
        firstSubscribe = false;
      }
      resumedAt = e.wasRecovering ? Date.now() : 0;
    },
    message: (m) => {
      let tag = '';
      if (resumedAt && (m.createdAtMs ?? 0) < resumedAt) {
        tag = 'caught-up';
        show('caughtup', ++counters.caughtup);
      } else if (!resumedAt && (m.createdAtMs ?? Date.now()) < startedAt) {
        tag = 'lookback';
      }
      $('feed').prepend(item(m, tag));
      show('count', ++counters.count);
      show('dups', news.duplicatesDropped);
    },
    unrecovered: () => {
      // The gateway could not resume: a real app would refetch its state here.
      show('unrecovered', ++counters.unrecovered);
    },
  });
  client.subscribe('Chat', {
    message: (m) => {
      const li = document.createElement('li');
      li.textContent = `${m.payload?.from ?? '?'}: ${m.payload?.text ?? ''}`;
      $('chat-feed').prepend(li);
    },
  });

  client.on('state', (e) => setState(e.state, client.transportKind));
  client.on('connected', (e) => {
    setState('connected', e.transport);
    show('detail', '');
  });
  client.on('reconnecting', (e) =>
    show('detail', `(${e.serverHint ? 'server asked to wait' : 'retry'} in ${(e.delayMs / 1000).toFixed(1)} s)`),
  );
  client.on('token', (e) => {
    const end = e.expiresAtMs;
    clearInterval(timer);
    timer = setInterval(() => show('token', end ? `expires in ${Math.max(0, Math.round((end - Date.now()) / 1000))} s` : 'opaque'), 1000);
  });
  client.on('error', (e) => show('detail', `(${e.code}: ${e.message})`));
  client.connect();
}

$('toggle').addEventListener('click', () => {
  if (client.state === 'disconnected') client.connect();
  else client.disconnect();
});

$('chat').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('chat-text');
  const text = input.value.trim();
  if (!text) return;
  try {
    await client.publish('Chat', { from: client.user, text });
    input.value = '';
    show('chat-result', '');
  } catch (e) {
    // Typed errors: e.code is e.g. not_publishable, rate_limited, unsupported.
    show('chat-result', `not published (${e.code}): ${e.message}`);
  }
});

for (const u of config.users) {
  const b = document.createElement('button');
  b.type = 'button';
  b.dataset.user = u.id;
  b.textContent = `${u.name} (${u.products.join(', ')})`;
  b.addEventListener('click', () => start(u));
  $('users').append(b);
}
const wanted = new URLSearchParams(location.search).get('user');
start(config.users.find((u) => u.id === wanted) ?? config.users[0]);
