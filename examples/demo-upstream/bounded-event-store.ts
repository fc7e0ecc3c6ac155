import type { EventId, EventStore, StreamId } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";

/**
 * The events one upstream session has sent, kept so a client can resume an SSE stream with
 * `Last-Event-ID` (2025-11-25 basic/transports, "Resumability and Redelivery").
 *
 * Written here instead of using the SDK's `examples/shared/inMemoryEventStore.js`, which this demo
 * cannot rely on: it never forgets an event (memory grows for the life of the process), it orders
 * replay by sorting `${streamId}_${Date.now()}_${random}` ids as text (events sent in the same
 * millisecond come back in random order), and it recovers the stream id by splitting on "_", which
 * turns the SDK's own standalone stream id `_GET_stream` into "" (a resumed GET stream replays
 * nothing and is registered under the wrong stream).
 *
 * One store per session, so event ids never cross sessions. Ids are a counter: order is insertion
 * order, and an id names nothing but its position. When full, the session's oldest event is
 * dropped; a client resuming from it gets the SDK's 400 and starts over, which the spec allows.
 */
export class BoundedEventStore implements EventStore {
  readonly #maxEvents: number;
  // Map iteration follows insertion order, which is exactly the order events were sent in.
  readonly #events = new Map<EventId, { readonly streamId: StreamId; readonly message: JSONRPCMessage }>();
  #nextId = 1;

  constructor(maxEvents = 1024) {
    if (!Number.isInteger(maxEvents) || maxEvents < 1) {
      throw new RangeError("maxEvents must be a positive integer");
    }
    this.#maxEvents = maxEvents;
  }

  async storeEvent(streamId: StreamId, message: JSONRPCMessage): Promise<EventId> {
    const eventId = String(this.#nextId++);
    this.#events.set(eventId, { streamId, message });
    if (this.#events.size > this.#maxEvents) {
      const oldest = this.#events.keys().next();
      if (!oldest.done) this.#events.delete(oldest.value);
    }
    return eventId;
  }

  // Defined so the SDK refuses an unknown id (400) and a stream that is already connected (409)
  // before it starts replaying.
  async getStreamIdForEventId(eventId: EventId): Promise<StreamId | undefined> {
    return this.#events.get(eventId)?.streamId;
  }

  async replayEventsAfter(
    lastEventId: EventId,
    { send }: { send: (eventId: EventId, message: JSONRPCMessage) => Promise<void> },
  ): Promise<StreamId> {
    const last = this.#events.get(lastEventId);
    if (!last) return "";
    let found = false;
    // Iterates the live map: an event stored for this stream while the replay awaits `send` is
    // replayed too, rather than lost between the replay and the stream being reattached.
    for (const [eventId, event] of this.#events) {
      if (eventId === lastEventId) {
        found = true;
      } else if (found && event.streamId === last.streamId) {
        await send(eventId, event.message);
      }
    }
    return last.streamId;
  }
}
