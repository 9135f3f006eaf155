// Locations in a room: the manual form when the browser cannot tell where we are, and
// the place an auto-location room asks of every message.

import { tr } from "./common.js";
import { root } from "./chat-page.js";
import { browserLocation, numberFrom } from "./chat-place.js";

// The manual form, when the browser cannot tell where we are; resolves to a place or null.
export function askPlace(why) {
  const locationDialog = document.getElementById("location-dialog");
  return new Promise((resolve) => {
    locationDialog.querySelector(".location-why").textContent = why;
    locationDialog.returnValue = "";
    locationDialog.addEventListener("close", () => {
      if (locationDialog.returnValue !== "send") return resolve(null);
      const lat = numberFrom(document.getElementById("loc-lat"), -90, 90);
      const lon = numberFrom(document.getElementById("loc-lon"), -180, 180);
      const label = document.getElementById("loc-label").value.trim();
      resolve(lat === null || lon === null ? null : { lat, lon, ...(label ? { label } : {}) });
    }, { once: true });
    locationDialog.showModal();
  });
}

// A location for a message in an auto-location room: the typed one, else the browser's.
export async function messagePlace() {
  const lat = numberFrom(document.getElementById("msg-lat"), -90, 90);
  const lon = numberFrom(document.getElementById("msg-lon"), -180, 180);
  if (lat !== null && lon !== null) return { lat, lon };
  const status = root.querySelector('[data-testid="location-status"]');
  try {
    const place = await browserLocation();
    document.getElementById("msg-lat").value = place.lat.toFixed(6);
    document.getElementById("msg-lon").value = place.lon.toFixed(6);
    return place;
  } catch (error) {
    status.textContent = `${error.message} ${tr("ห้องนี้ต้องระบุตำแหน่งทุกข้อความ กรุณากรอกละติจูดและลองจิจูด", "This room needs a location on every message: enter latitude and longitude.")}`;
    status.classList.add("alert");
    document.getElementById("msg-lat").focus();
    return null;
  }
}

// The composer's "send my location" button: the browser's place, else the manual form.
export async function sendLocation(send) {
  let place;
  try {
    place = await browserLocation();
  } catch (error) {
    place = await askPlace(error.message);
  }
  if (place) await send({ kind: "location", location: place });
}
