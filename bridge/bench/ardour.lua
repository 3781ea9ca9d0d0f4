-- midi-bridge bench ardour (bridge/bench/ardour.py): Ardour's side, for its headless Lua
-- session tool (ardour7-lua -X ardour.lua MODE ...).  Two modes:
--   create DIR NAME RATE BPM CLIENT
--     a session with two MIDI tracks, 'player' and 'answers', at BPM
--   run DIR NAME CLIENT BRIDGE_IN BRIDGE_OUT PHRASES SECONDS WITNESS
--     plays the phrases ("beat,pitch,velocity,beats;...") from 'player' into BRIDGE_IN with
--     Ardour's MIDI clock, records BRIDGE_OUT on 'answers', prints every note ("NOTE track
--     channel pitch velocity beats:ticks", timeline positions) and saves the session.
-- Markers on stdout for the caller: CREATED, LOADED, ROLL, XRUNS n, DONE.

if arg[1] == "create" then
  local dir, name, rate, bpm, client = arg[2], arg[3], tonumber(arg[4]), tonumber(arg[5]), arg[6]
  AudioEngine:set_backend("JACK", client, "")
  assert(create_session(dir, name, rate), "create_session failed")
  local midi = ARDOUR.DataType("midi")
  for _, n in ipairs({"player", "answers"}) do
    local tl = Session:new_midi_track(ARDOUR.ChanCount(midi, 1), ARDOUR.ChanCount(midi, 1), false,
      ARDOUR.PluginInfo(), nil, nil, 1, n, ARDOUR.PresentationInfo.max_order,
      ARDOUR.TrackMode.Normal, false, false)
    assert(tl:size() == 1, "new_midi_track " .. n)
  end
  local tm = Temporal.TempoMap.fetch_writable()
  tm:set_tempo(Temporal.Tempo(bpm, bpm, 4), Temporal.timepos_t(0))
  Temporal.TempoMap.update(tm)
  print("TEMPO", Temporal.TempoMap.read():quarters_per_minute_at(Temporal.timepos_t(0)))
  Session:save_state("", false, false, false, false, false)
  print("CREATED")
  return
end

local dir, name, client, bridge_in, bridge_out = arg[2], arg[3], arg[4], arg[5], arg[6]
local spec, seconds, witness = arg[7], tonumber(arg[8]), arg[9]
AudioEngine:set_backend("JACK", client, "")
assert(load_session(dir, name), "load_session failed")
assert(AudioEngine:running(), "engine not running")
print("LOADED")
local UI, NoGroup = ARDOUR.TransportRequestSource.TRS_UI, PBD.GroupControlDisposition.NoGroup
local player = Session:route_by_name("player"):to_track()
local answers = Session:route_by_name("answers"):to_track()
local function roll()
  Session:request_locate(0, false, ARDOUR.LocateTransportDisposition.MustStop, UI)
  sleep(0.5)
  Session:maybe_enable_record(false)
  Session:request_roll(UI)
end
local function stop()
  Session:request_stop(false, false, UI)
  for _ = 1, 100 do if Session:transport_stopped() then break end sleep(0.05) end
  Session:disable_record(false, false)
  sleep(0.5)
end
for r in Session:get_routes():iter() do        -- audio too: nothing for latency compensation
  r:input():disconnect_all(nil)
  r:output():disconnect_all(nil)
end
-- a scratch take from Ardour's virtual keyboard gives 'player' a MIDI region
local vk = "x-virtual-keyboard"
AudioEngine:connect(vk, player:input():nth(0):name())
local port, parser = AudioEngine:get_port_by_name(vk):to_asyncmidiport(), ARDOUR.RawMidiParser()
local function send(...)
  for _, b in ipairs({...}) do
    if parser:process_byte(b) then port:write(parser:midi_buffer(), parser:buffer_size(), 0) end
  end
end
player:rec_enable_control():set_value(1, NoGroup)
roll()
sleep(0.5); send(0x90, 60, 100); sleep(0.2); send(0x80, 60, 0); sleep(0.5)
stop()
player:rec_enable_control():set_value(0, NoGroup)
AudioEngine:disconnect(vk, player:input():nth(0):name())
-- the region becomes the player's phrases ("beat,pitch,velocity,beats;..."), from 0
local region = nil
for r in player:playlist():region_list():iter() do region = r:to_midiregion() end
assert(region and not region:isnil(), "no scratch region recorded")
local model = region:model()
local cmd = model:new_note_diff_command("phrases")
for n in ARDOUR.LuaAPI.note_list(model):iter() do cmd:remove(n) end
local tpb, last = Temporal.ticks_per_beat, 0
for b, p, v, l in spec:gmatch("([%d.]+),(%d+),(%d+),([%d.]+)") do
  cmd:add(ARDOUR.LuaAPI.new_noteptr(0, Temporal.Beats.ticks(math.floor(tonumber(b) * tpb + 0.5)),
    Temporal.Beats.ticks(math.floor(tonumber(l) * tpb + 0.5)), tonumber(p), tonumber(v)))
  last = math.max(last, tonumber(b) + tonumber(l))
end
model:apply_command(Session, cmd)
region:set_position(Temporal.timepos_t.from_ticks(0))
region:set_length(Temporal.timecnt_t.from_ticks(math.ceil(last + 1) * tpb))
-- the take: player and Ardour's MIDI clock into the bridge, the bridge into 'answers'
AudioEngine:connect(player:output():nth(0):name(), bridge_in)
AudioEngine:connect("MIDI Clock out", bridge_in)
AudioEngine:connect(bridge_out, answers:input():nth(0):name())
if witness ~= "-" then                         -- jack_midi_dump -a: the frames, from outside
  AudioEngine:connect("MIDI Clock out", witness)
  AudioEngine:connect(bridge_out, witness)
end
ARDOUR.config():set_send_midi_clock(true)
answers:rec_enable_control():set_value(1, NoGroup)
sleep(0.5)
Session:reset_xrun_count()
print("ROLL")
roll()
sleep(seconds)
stop()
print("XRUNS", Session:get_xrun_count())
ARDOUR.config():set_send_midi_clock(false)
answers:rec_enable_control():set_value(0, NoGroup)
for _, t in ipairs({player, answers}) do
  for r in t:playlist():region_list():iter() do
    local pos, start = r:position():beats(), r:start():beats()
    print("TAKE", t:name(), pos:str())
    for n in ARDOUR.LuaAPI.note_list(r:to_midiregion():model()):iter() do
      print("NOTE", t:name(), n:channel(), n:note(), n:velocity(), (pos + (n:time() - start)):str())
    end
  end
end
Session:save_state("", false, false, false, false, false)
print("DONE")
