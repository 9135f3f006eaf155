// Where the browser is: for a message, an alert or a shared location (chat pages).

import { el, tr } from "./common.js";

export function browserLocation() {
  return new Promise((resolve, reject) => {
    if (!navigator.geolocation) {
      reject(new Error(tr("เบราว์เซอร์นี้ไม่รองรับการระบุตำแหน่ง", "This browser cannot tell its location")));
      return;
    }
    navigator.geolocation.getCurrentPosition(
      (position) => resolve({ lat: position.coords.latitude, lon: position.coords.longitude }),
      (error) => reject(new Error(error.code === 1
        ? tr("ไม่ได้รับอนุญาตให้ใช้ตำแหน่ง", "Permission to use the location was refused")
        : tr("อ่านตำแหน่งจากเบราว์เซอร์ไม่ได้", "The browser could not tell the location"))),
      { enableHighAccuracy: true, timeout: 10000, maximumAge: 60000 });
  });
}

// The number typed in *input* when it lies within [low, high], else null.
export function numberFrom(input, low, high) {
  const value = input?.value.trim() === "" ? NaN : Number(input?.value);
  return Number.isFinite(value) && value >= low && value <= high ? value : null;
}

// The "use my location" buttons beside the latitude and longitude fields of a form.
export function bindFillLocation(root) {
  for (const button of root.querySelectorAll('[data-action="fill-location"]')) {
    button.addEventListener("click", async () => {
      const lat = document.getElementById(button.dataset.lat);
      const lon = document.getElementById(button.dataset.lon);
      try {
        const place = await browserLocation();
        lat.value = place.lat.toFixed(6);
        lon.value = place.lon.toFixed(6);
      } catch (error) {
        button.after(el("span", { class: "alert", role: "alert" }, " ", error.message));
        lat.focus();
      }
    });
  }
}
