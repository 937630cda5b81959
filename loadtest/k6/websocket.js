// WebSocket through the gateway: each VU opens a connection, sends messages and checks each
// echo, then closes.
import ws from 'k6/ws';
import { check } from 'k6';
import { options as suiteOptions, target } from './common.js';

export const options = suiteOptions('websocket');

export default function () {
  const url = `${target.replace(/^http/, 'ws')}/ws`;
  let echoed = 0;
  const response = ws.connect(url, {}, (socket) => {
    socket.on('open', () => {
      for (let index = 0; index < 5; index++) {
        socket.send(`message ${__VU}-${index}`);
      }
    });
    socket.on('message', (message) => {
      if (message.startsWith(`message ${__VU}-`)) {
        echoed += 1;
      }
      if (echoed === 5) {
        socket.close();
      }
    });
    socket.setTimeout(() => socket.close(), 5000);
  });
  check(response, { 'upgraded with 101': (r) => r && r.status === 101 });
  check(echoed, { 'every message echoed': (count) => count === 5 });
}
