/**
 * recordings.js: the demo's recording player page (terminal_proxy/web/recording.html).
 *
 * Plays the asciicast v2 file named by #player's data-cast-url with asciinema-player.
 * Tests read window.recordingPlayer (the player) and the rendered text in #player.
 */
import "asciinema-player/dist/bundle/asciinema-player.css";
import * as AsciinemaPlayer from "asciinema-player";

const element = document.getElementById("player");
window.recordingPlayer = AsciinemaPlayer.create(element.dataset.castUrl, element, {
  autoPlay: true,
  idleTimeLimit: 1,
  fit: "width",
});
